"""process_images on a folder of odd formats, with a stand-in pipeline that finds a white
square, so every number written can be checked exactly."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ccm.poses import FramePoses
from realtime.batch.images import COCO_IMAGES_FILE, COCO_RESULTS_FILE, POSES_FILE, process_images
from realtime.batch.inputs import IMAGE_SUFFIXES, expand_inputs
from realtime.render import render_frame
from realtime.stream.results import FrameResult


class SquarePoser:
    """`pipeline.reset(); pipeline(frame)` as process_images calls it: one person with every
    keypoint at the centre of the image's white square, score 0.9."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def reset(self) -> None:
        self.calls.append("reset")

    def __call__(self, frame) -> FrameResult:
        image = frame.image
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.flags.c_contiguous and (frame.index, frame.pts) == (0, 0.0)
        self.calls.append("call")
        ys, xs = np.nonzero(image.min(axis=2) == 255)
        if len(xs) == 0:
            return FrameResult(frame, FramePoses.empty(0, 0.0))
        x, y = float(xs.mean()), float(ys.mean())
        poses = FramePoses(
            0, 0.0,
            torch.tensor([[xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]]),
            torch.tensor([0.9]), torch.tensor([[[x, y, 0.8]] * 17]), torch.tensor([-1]),
        )  # fmt: skip
        return FrameResult(frame, poses)


def _picture(height: int, width: int, square: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB, dark with a 4x4 white square whose top-left is (x, y)."""
    image = np.full((height, width, 3), 40, np.uint8)
    image[:, :, 1] = 90
    x, y = square
    image[y : y + 4, x : x + 4] = 255
    return image


def _bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., ::-1])


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), _bgr(_picture(20, 30, (3, 5))))
    deep = _picture(20, 30, (10, 2)).astype(np.uint16) * 257
    cv2.imwrite(str(root / "deep16.png"), _bgr(deep))
    gray = _picture(16, 24, (7, 7))[..., 1].copy()
    gray[gray == 90] = 30
    cv2.imwrite(str(root / "gray.png"), gray)
    rgba = np.dstack([_bgr(_picture(20, 30, (20, 12))), np.full((20, 30), 255, np.uint8)])
    rgba[:, :5, 3] = 128  # half transparent: composited over white, yet never pure white
    cv2.imwrite(str(root / "rgba.png"), rgba)
    cv2.imwrite(str(root / "sub" / "photo.jpg"), _bgr(_picture(24, 32, (8, 8))),
                [cv2.IMWRITE_JPEG_QUALITY, 100])  # fmt: skip
    cv2.imwrite(str(root / "sub" / "lossless.webp"), _bgr(_picture(20, 30, (1, 1))),
                [cv2.IMWRITE_WEBP_QUALITY, 101])  # fmt: skip
    # Stored 30 wide x 20 high, EXIF orientation 6: shown turned clockwise, 20 wide x 30 high.
    pil = Image.fromarray(_picture(20, 30, (3, 5)))
    exif = pil.getexif()
    exif[0x0112] = 6
    pil.save(root / "sub" / "turned.png", exif=exif)
    cv2.imwrite(str(root / "empty.bmp"), np.full((6, 5, 3), 40, np.uint8))  # nobody in it
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    (root / "notes.txt").write_text("not an image")
    return root


def test_image_folder_posed_image_by_image(tmp_path: Path, image_folder: Path):
    found = expand_inputs([image_folder], IMAGE_SUFFIXES, keep_suffix=True, kind="image")
    out = tmp_path / "out"
    pipeline = SquarePoser()
    seen = []
    reports = process_images(found.files, out, pipeline, render_frame, seen.append)
    assert seen == reports
    by_name = {r.name: r for r in reports}
    assert list(by_name) == [
        "a.png", "broken.png", "deep16.png", "empty.bmp", "gray.png", "rgba.png",
        "sub/lossless.webp", "sub/photo.jpg", "sub/turned.png",
    ]  # fmt: skip
    assert by_name["broken.png"].error.startswith("not a readable image")
    assert [r.name for r in reports if r.error] == ["broken.png"]
    # Each image on its own: the pipeline is reset before every image that was read.
    assert pipeline.calls == ["reset", "call"] * 8

    lines = [json.loads(line) for line in (out / POSES_FILE).read_text().splitlines()]
    assert [line["image"] for line in lines] == [n for n in by_name if n != "broken.png"]
    sizes = {line["image"]: (line["width"], line["height"]) for line in lines}
    assert sizes == {
        "a.png": (30, 20), "deep16.png": (30, 20), "empty.bmp": (5, 6), "gray.png": (24, 16),
        "rgba.png": (30, 20),
        "sub/lossless.webp": (30, 20), "sub/photo.jpg": (32, 24), "sub/turned.png": (20, 30),
    }  # fmt: skip
    # Square centres (top-left + 1.5) in the image as displayed; turned.png's (3, 5) top-left
    # square, turned clockwise in a 20-row image, has its top-left at (20 - 5 - 4, 3).
    centres = {
        "a.png": (4.5, 6.5), "deep16.png": (11.5, 3.5), "gray.png": (8.5, 8.5),
        "rgba.png": (21.5, 13.5), "sub/lossless.webp": (2.5, 2.5), "sub/photo.jpg": (9.5, 9.5),
        "sub/turned.png": (12.5, 4.5),
    }  # fmt: skip
    assert lines[2] == {"image": "empty.bmp", "width": 5, "height": 6, "poses": []}
    del lines[2]
    for line in lines:
        (pose,) = line["poses"]
        assert pose["track_id"] == -1 and pose["score"] == 0.9
        x, y = centres[line["image"]]
        tol = 0.5 if line["image"].endswith(".jpg") else 1e-9
        np.testing.assert_allclose(pose["keypoints"], [[x, y, 0.8]] * 17, atol=tol)

    coco = json.loads((out / COCO_RESULTS_FILE).read_text())
    images = json.loads((out / COCO_IMAGES_FILE).read_text())["images"]
    # image_id = line number in poses.jsonl; the empty image (line 3) has no result.
    assert [(i["id"], i["file_name"]) for i in images] == list(enumerate(sizes, start=1))
    assert [r["image_id"] for r in coco] == [1, 2, 4, 5, 6, 7, 8]
    for result, line in zip(coco, lines, strict=True):
        assert result["category_id"] == 1 and result["score"] == 0.9
        flat = [v for kp in line["poses"][0]["keypoints"] for v in kp]
        assert result["keypoints"] == flat

    # Rendered images mirror the input layout, at the displayed size, and differ from the input.
    rendered = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert rendered == sorted(
        [*sizes, POSES_FILE, COCO_RESULTS_FILE, COCO_IMAGES_FILE]
    )  # nothing else: no temp file, no broken.png
    drawn = cv2.imread(str(out / "sub" / "turned.png"))
    assert drawn.shape == (30, 20, 3)


def test_interrupt_keeps_rendered_images_and_drops_the_unfinished_json(
    tmp_path: Path, image_folder: Path
):
    found = expand_inputs([image_folder], IMAGE_SUFFIXES, keep_suffix=True)

    def stop_at_gray(report) -> None:  # Ctrl-C right after gray.png is done
        if report.name == "gray.png":
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        process_images(found.files, out, SquarePoser(), render_frame, stop_at_gray)
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == ["a.png", "deep16.png", "empty.bmp", "gray.png"]
