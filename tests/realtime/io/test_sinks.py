"""Sinks (mp4, JSONL, COCO results) and the FramePoses record they write."""

from __future__ import annotations

import contextlib
import io
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ccm.poses import FramePoses
from ccm.skeleton import COCO_KEYPOINTS, COCO_LIMBS
from realtime.io.atomic_files import remove_stale_parts
from realtime.io.sinks import (
    CocoResultsWriter,
    ImagePosesWriter,
    JsonlWriter,
    Mp4Writer,
    write_image,
    write_json,
)
from realtime.io.sources import open_source


def _smooth_frame(i: int, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: colour gradients that drift with i (H.264 compresses them well)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / width * 2 * np.pi + 0.3 * i)
    g = 128 + 100 * np.cos(y / height * 2 * np.pi - 0.2 * i)
    b = 40 + 180 * (x + y) / (width + height)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _decode(path: Path) -> tuple[av.VideoStream, list[tuple[float, np.ndarray]]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    return stream, frames


@pytest.mark.parametrize(
    ("fps", "size"), [(25.0, (64, 96)), (30000 / 1001, (64, 96)), (10.0, (63, 95))]
)
def test_mp4_roundtrip(tmp_path: Path, fps: float, size: tuple[int, int]):
    height, width = size
    n = 12
    inputs = [_smooth_frame(i, height, width) for i in range(n)]
    out = tmp_path / "clip.mp4"
    with Mp4Writer(out, fps) as writer:
        for i, image in enumerate(inputs):
            writer.write(image, i / fps)
        assert not out.exists()  # only a hidden temporary file until close
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    stream, frames = _decode(out)
    assert stream.codec_context.name == "h264"
    assert stream.average_rate == Fraction(fps).limit_denominator(1001)
    # Odd sizes are padded by one pixel to the even size yuv420p needs.
    assert (stream.codec_context.height, stream.codec_context.width) == (
        height + height % 2,
        width + width % 2,
    )
    assert len(frames) == n
    np.testing.assert_allclose([t for t, _ in frames], np.arange(n) / fps, atol=1e-6)
    psnr = [
        _psnr(image, decoded[:height, :width])
        for image, (_, decoded) in zip(inputs, frames, strict=True)
    ]
    assert min(psnr) > 30.0, psnr


def test_mp4_keeps_pts_of_dropped_frames(tmp_path: Path):
    # A realtime source that dropped frames 1, 2 and 4: the file keeps the real timing.
    out = tmp_path / "gaps.mp4"
    with Mp4Writer(out, 10.0) as writer:
        for index in (0, 3, 5, 6):
            writer.write(_smooth_frame(index, 32, 32), index / 10.0)
    _, frames = _decode(out)
    np.testing.assert_allclose([t for t, _ in frames], [0.0, 0.3, 0.5, 0.6], atol=1e-9)


def _make_clip_with_audio(path: Path, seconds: float, audio_seconds: float, fps: int = 10) -> None:
    """An H.264 + AAC mp4: `seconds` of video and `audio_seconds` of a 440 Hz tone, 16 kHz mono."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(_smooth_frame(i, 48, 64), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        t = np.arange(round(audio_seconds * 16000)) / 16000
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, tone.size, 1024):
            chunk = av.AudioFrame.from_ndarray(
                tone[None, start : start + 1024], format="fltp", layout="mono"
            )
            chunk.sample_rate, chunk.pts = 16000, start
            out.mux(audio.encode(chunk))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))


def _audio_packets(path: Path, until: float | None = None) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [
            bytes(p)
            for p in container.demux(stream)
            if p.dts is not None and (until is None or p.pts * p.time_base < until)
        ]


def test_mp4_copies_source_audio(tmp_path: Path):
    source_path = tmp_path / "with_audio.mp4"
    _make_clip_with_audio(source_path, seconds=1.0, audio_seconds=1.5)
    out = tmp_path / "rendered.mp4"
    with open_source(source_path, realtime=False) as source:
        track = source.info.audio
        assert track is not None
        assert (track.codec, track.sample_rate, track.channels) == ("aac", 16000, 1)
        with Mp4Writer(out, source.info.fps, audio=track) as writer:
            for frame in source:
                writer.write(255 - frame.image, frame.pts)
    with av.open(str(out)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        a = container.streams.audio[0].codec_context
        assert (a.name, a.sample_rate, a.channels) == ("aac", 16000, 1)
    copied = _audio_packets(out)
    # Remuxed, not re-encoded: the very same packets, up to the end of the last video frame.
    assert copied == _audio_packets(source_path, until=1.0)
    assert len(copied) == 17 and len(_audio_packets(source_path)) == 25


def test_mp4_crash_mid_write_leaves_no_file(tmp_path: Path):
    out = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError, match="pipeline failed"):
        with Mp4Writer(out, 10.0) as writer:
            writer.write(_smooth_frame(0, 32, 32))
            writer.write(_smooth_frame(1, 32, 32))
            raise RuntimeError("pipeline failed")
    assert list(tmp_path.iterdir()) == []


def test_mp4_rejects_bad_frames_and_empty_output(tmp_path: Path):
    out = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="differs from the first frame's 32x32"):
        with Mp4Writer(out, 10.0) as writer:
            writer.write(_smooth_frame(0, 32, 32))
            writer.write(_smooth_frame(1, 16, 32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        with Mp4Writer(out, 10.0) as writer:
            writer.write(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="no frames were written"):
        with Mp4Writer(out, 10.0):
            pass
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        Mp4Writer(tmp_path / "missing_dir" / "x.mp4", 10.0)
    assert list(tmp_path.iterdir()) == []


def _poses(frame: int, n: int, seed: int = 0) -> FramePoses:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 17, 2, generator=g) * 500
    return FramePoses(
        frame=frame,
        pts=frame / 30,
        boxes=torch.cat([xy.amin(1), xy.amax(1)], dim=1),
        scores=torch.rand(n, generator=g),
        keypoints=torch.cat([xy, torch.rand(n, 17, 1, generator=g)], dim=-1),
        track_ids=torch.arange(n) + 7,
    )


def test_frame_poses_conversions_and_validation():
    poses = _poses(3, 2)
    assert len(poses) == 2 and poses.num_keypoints == 17
    arrays = poses.numpy()
    assert isinstance(arrays.keypoints, np.ndarray) and arrays.keypoints.shape == (2, 17, 3)
    np.testing.assert_array_equal(arrays.track_ids, [7, 8])
    assert isinstance(poses.cpu().boxes, torch.Tensor)
    empty = FramePoses.empty(frame=4, pts=0.5)
    assert len(empty) == 0 and empty.keypoints.shape == (0, 17, 3)
    assert empty.to_dict() == {"frame": 4, "pts": 0.5, "poses": []}
    with pytest.raises(ValueError, match=r"keypoints \(2, 17, 2\) != \(2, K, 3\)"):
        FramePoses(3, 0.1, poses.boxes, poses.scores, poses.keypoints[..., :2], poses.track_ids)
    with pytest.raises(ValueError, match=r"scores \(1,\) != \(2,\)"):
        FramePoses(3, 0.1, poses.boxes, poses.scores[:1], poses.keypoints, poses.track_ids)


def test_to_json_schema_and_rounding():
    poses = FramePoses(
        frame=12,
        pts=0.4004,
        boxes=np.array([[10.123, 20.456, 110.0049, 220.5]]),
        scores=np.array([0.987654]),
        keypoints=np.tile(np.array([[[5.6789, 7.001, 0.123456]]]), (1, 17, 1)),
        track_ids=np.array([3]),
    )
    record = json.loads(poses.to_json())
    assert record == {
        "frame": 12,
        "pts": 0.4004,
        "poses": [
            {
                "track_id": 3,
                "box": [10.12, 20.46, 110.0, 220.5],
                "score": 0.9877,
                "keypoints": [[5.68, 7.0, 0.1235]] * 17,
            }
        ],
    }
    assert "\n" not in poses.to_json()
    nan = FramePoses(1, 0.0, poses.boxes, np.array([np.nan]), poses.keypoints, poses.track_ids)
    with pytest.raises(ValueError, match="frame 1 holds NaN"):
        nan.to_json()


def test_jsonl_writer(tmp_path: Path):
    out = tmp_path / "clip.jsonl"
    frames = [_poses(0, 2, seed=1), FramePoses.empty(1, 1 / 30), _poses(2, 3, seed=2)]
    with JsonlWriter(out) as writer:
        for poses in frames:
            writer.write(poses)
        assert not out.exists()
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    for line, poses in zip(lines, frames, strict=True):
        record = json.loads(line)
        assert set(record) == {"frame", "pts", "poses"} and record["frame"] == poses.frame
        assert len(record["poses"]) == len(poses)
        for pose in record["poses"]:
            assert set(pose) == {"track_id", "box", "score", "keypoints"}
            assert isinstance(pose["track_id"], int) and len(pose["box"]) == 4
            assert np.array(pose["keypoints"]).shape == (17, 3)
        back = FramePoses.from_json(line)
        np.testing.assert_allclose(back.keypoints, poses.numpy().keypoints, atol=5e-3)
        np.testing.assert_allclose(back.boxes, poses.numpy().boxes, atol=5e-3)
        np.testing.assert_allclose(back.scores, poses.numpy().scores, atol=5e-5)
        np.testing.assert_array_equal(back.track_ids, poses.numpy().track_ids)

    with pytest.raises(KeyError):
        with JsonlWriter(tmp_path / "crash.jsonl") as writer:
            writer.write(frames[0])
            raise KeyError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.jsonl"]


def _tiny_coco_gt() -> dict:
    """Two images, three people with all 17 keypoints labelled visible."""
    rng = np.random.default_rng(0)
    annotations = []
    for ann_id, image_id in enumerate((1, 1, 2), start=1):
        xy = np.round(rng.uniform(50, 250, size=(17, 2)), 2)
        x0, y0 = xy.min(0)
        w, h = xy.max(0) - xy.min(0)
        kpts = np.concatenate([xy, np.full((17, 1), 2.0)], axis=1)
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": 1,
                "keypoints": kpts.reshape(-1).tolist(),
                "num_keypoints": 17,
                "bbox": [float(x0), float(y0), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": 0,
            }
        )
    return {
        "images": [{"id": i, "width": 320, "height": 320, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "annotations": annotations,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(COCO_KEYPOINTS),
                "skeleton": [[a + 1, b + 1] for a, b in COCO_LIMBS],
            }
        ],
    }


def test_coco_results_load_and_score_perfectly(tmp_path: Path):
    gt = _tiny_coco_gt()
    out = tmp_path / "results.json"
    with CocoResultsWriter(out) as writer:
        for image_id in (1, 2):
            anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
            kpts = torch.tensor([a["keypoints"] for a in anns]).view(-1, 17, 3)
            kpts[..., 2] = 0.9  # keypoint score instead of visibility
            boxes = torch.tensor([a["bbox"] for a in anns])
            boxes[:, 2:] += boxes[:, :2]
            poses = FramePoses(
                image_id, 0.0, boxes, torch.full((len(anns),), 0.8), kpts, torch.zeros(len(anns))
            )
            writer.write(image_id, poses)
        assert len(writer) == 3
    results = json.loads(out.read_text())
    assert set(results[0]) == {"image_id", "category_id", "keypoints", "score"}
    assert results[0]["category_id"] == 1 and len(results[0]["keypoints"]) == 51

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(str(out))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert len(coco_dt.getAnnIds()) == 3
    assert evaluator.stats[0] == pytest.approx(1.0)  # AP: predictions equal the ground truth


def test_temp_files_name_their_writer_and_only_stale_ones_are_removed(tmp_path: Path):
    import socket
    import subprocess
    import sys

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [
            out / f".clip.mp4.{dead_pid}@{host}.0123abcd.part",  # killed run, this host
            out / "sub" / f".x.jsonl.{dead_pid}@{host}.89abcdef.part",
            out / ".old.mp4.deadbeef.part",  # an earlier version's name: no owner recorded
        ]
        kept = [
            out / f".live.mp4.{alive.pid}@{host}.0123abcd.part",  # a run still going
            out / f".other.mp4.{dead_pid}@some-other-host.0123abcd.part",  # can't tell: keep
            out / "clip.mp4",
            out / "notes.part",
        ]
        for path in stale + kept:
            path.write_bytes(b"x")
        with JsonlWriter(out / "mine.jsonl") as mine:  # this process's own temp file
            temp = next(out.glob(".mine.jsonl.*.part"))
            assert temp.name.startswith(f".mine.jsonl.{os.getpid()}@{host}.")
            assert sorted(remove_stale_parts(out)) == sorted(stale)
            assert temp.exists()
            mine.write(FramePoses.empty(0, 0.0))
        assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
        assert (out / "mine.jsonl").read_text().startswith('{"frame":0')
        assert remove_stale_parts(out) == [] and remove_stale_parts(tmp_path / "none") == []
    finally:
        alive.kill()
        alive.wait()


def test_write_image_and_json_are_atomic(tmp_path: Path):
    image = _smooth_frame(0, 10, 14)
    for suffix in (".png", ".webp"):
        path = write_image(tmp_path / f"a{suffix}", image)
        back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]
        if suffix == ".png":
            np.testing.assert_array_equal(back, image)
    with pytest.raises(ValueError, match=r"a\.xyz: OpenCV cannot write"):
        write_image(tmp_path / "a.xyz", image)
    with pytest.raises(ValueError, match="uint8 RGB"):
        write_image(tmp_path / "b.png", image[..., 0])
    write_json(tmp_path / "c.json", {"a": [1, 2.5]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2.5]}
    with pytest.raises(ValueError):
        write_json(tmp_path / "d.json", {"a": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.webp", "c.json"]


def test_image_poses_writer_uses_the_video_pose_schema(tmp_path: Path):
    keypoints = torch.rand(2, 17, 3, dtype=torch.float64) * 50
    poses = FramePoses(
        0, 0.0, torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0]]),
        torch.tensor([0.9, 0.5]), keypoints, torch.tensor([-1, -1]),
    )  # fmt: skip
    path = tmp_path / "poses.jsonl"
    with ImagePosesWriter(path) as writer:
        writer.write("sub/a.jpg", 640, 480, poses)
        writer.write("b.png", 3, 2, FramePoses.empty(0, 0.0))
        assert not path.exists()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"image": "sub/a.jpg", "width": 640, "height": 480,
                        "poses": poses.to_dict()["poses"]}  # fmt: skip
    assert lines[0]["poses"][0]["keypoints"][3] == [
        round(float(keypoints[0, 3, 0]), 2), round(float(keypoints[0, 3, 1]), 2),
        round(float(keypoints[0, 3, 2]), 4),
    ]  # fmt: skip
    assert lines[1] == {"image": "b.png", "width": 3, "height": 2, "poses": []}


def test_coco_results_writer_takes_a_frame_without_people(tmp_path: Path):
    with CocoResultsWriter(tmp_path / "r.json") as writer:
        writer.write(1, FramePoses.empty(0, 0.0))
        writer.write(2, FramePoses.empty(1, 0.1).numpy())
        assert len(writer) == 0
    assert json.loads((tmp_path / "r.json").read_text()) == []


def test_writers_can_be_kept_under_another_name_in_their_folder(tmp_path: Path):
    with Mp4Writer(tmp_path / "clip.mp4", 10.0) as video, JsonlWriter(tmp_path / "c.jsonl") as js:
        video.write(_smooth_frame(0, 16, 16))
        js.write(FramePoses.empty(0, 0.0))
        video.keep_as(tmp_path / "clip.partial.mp4")
        js.keep_as(tmp_path / "c.partial.jsonl")
        with pytest.raises(ValueError, match="not in the folder of"):
            js.keep_as(tmp_path / "elsewhere" / "c.jsonl")
    assert video.path == tmp_path / "clip.partial.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.partial.jsonl", "clip.partial.mp4"]
    assert len(_decode(tmp_path / "clip.partial.mp4")[1]) == 1
