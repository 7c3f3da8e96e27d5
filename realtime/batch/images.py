"""Pose a set of still images, each on its own (no tracking): `app.py images IN... --out DIR`.

Writes into DIR:

- `poses.jsonl`: one line per image read, in input order:
  `{"image": name, "width": W, "height": H, "poses": [...]}`, where `name` is the image's path
  relative to the input root (see `realtime.batch.inputs`) and the poses are the video schema's
  (`FramePoses.to_dict()["poses"]`, image pixels of the image as displayed, EXIF orientation
  applied). Without temporal fusion every track_id is -1.
- `coco_results.json`: the same poses as COCO keypoint results (`COCO.loadRes` reads it); the
  image_id of an image is its line number in poses.jsonl, counted from 1.
- `coco_images.json`: `{"images": [{"id", "file_name", "width", "height"}]}` for those ids.
- the rendered images, under their names (`DIR/sub/a.jpg` for `IN/sub/a.jpg`).

Each file is written to a temp file and renamed when complete. An image that cannot be read (or
fails in the pipeline) is reported in its `ImageReport` and left out; the rest go on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccm.poses import FramePoses
from realtime.batch.inputs import InputFile
from realtime.batch.report import describe
from realtime.batch.videos import Renderer
from realtime.io.frames import Frame
from realtime.io.images import read_image
from realtime.io.sinks import CocoResultsWriter, ImagePosesWriter, write_image, write_json
from realtime.stream.pipeline import PosePipeline

logger = logging.getLogger(__name__)

POSES_FILE = "poses.jsonl"
COCO_RESULTS_FILE = "coco_results.json"
COCO_IMAGES_FILE = "coco_images.json"


@dataclass
class ImageReport:
    """What happened to one image. `error` is None on success."""

    source: Path
    name: str
    width: int = 0
    height: int = 0
    people: int = 0
    rendered: Path | None = None
    error: str | None = None


def process_images(
    files: Sequence[InputFile],
    out_dir: Path,
    pipeline: PosePipeline,
    render: Renderer,
    progress: Callable[[ImageReport], None] | None = None,
) -> list[ImageReport]:
    """Pose each image on its own and write the outputs listed in the module docstring.

    `pipeline` should be built without temporal fusion; it is reset before every image.
    `progress(report)` is called after each image. Never raises for a bad image;
    KeyboardInterrupt and the like pass through, leaving the rendered images already written
    and removing the unfinished JSON files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: list[ImageReport] = []
    with ImageResultsWriter(out_dir) as results:
        for item in files:
            report, poses = pose_image(item, out_dir, pipeline, render)
            if poses is not None:
                results.add(report, poses)
            reports.append(report)
            if progress is not None:
                progress(report)
    return reports


def pose_image(
    item: InputFile, out_dir: Path, pipeline: PosePipeline, render: Renderer
) -> tuple[ImageReport, FramePoses | None]:
    """Pose one image and write its rendered copy to `out_dir / item.name`. Returns its report
    and poses (image pixels), or the report with its error and None: never raises for a bad
    image, and leaves no rendered copy of an image that failed."""
    report = ImageReport(item.path, item.name)
    try:
        image = read_image(item.path)
        report.height, report.width = image.shape[:2]
        pipeline.reset()
        poses = pipeline(Frame(0, 0.0, image, time.monotonic())).poses
        poses.to_dict()  # raises on NaN before anything of this image is written
        target = out_dir / item.name
        target.parent.mkdir(parents=True, exist_ok=True)
        report.rendered = write_image(target, render(image, poses, None, None))
        report.people = len(poses)
        return report, poses
    except Exception as err:  # a bad image is reported, never aborts the rest
        logger.debug("failed on %s", item.path, exc_info=True)
        report.error = describe(err, item.path)
        if report.rendered is not None:  # no output for an image that failed
            report.rendered.unlink(missing_ok=True)
            report.rendered = None
        return report, None


class ImageResultsWriter:
    """`poses.jsonl`, `coco_results.json` and `coco_images.json` of `out_dir`, one image at a
    time (`add`, in the order of the lines); all three are written whole or not at all."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._stack = contextlib.ExitStack()
        self._poses = self._stack.enter_context(ImagePosesWriter(out_dir / POSES_FILE))
        self._coco = self._stack.enter_context(CocoResultsWriter(out_dir / COCO_RESULTS_FILE))
        self._images: list[dict[str, object]] = []

    def add(self, report: ImageReport, poses: FramePoses) -> None:
        image_id = len(self._images) + 1
        self._coco.write(image_id, poses)
        self._poses.write(report.name, report.width, report.height, poses)
        self._images.append(
            {"id": image_id, "file_name": report.name,
             "width": report.width, "height": report.height}
        )  # fmt: skip

    def __enter__(self) -> ImageResultsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            write_json(self.out_dir / COCO_IMAGES_FILE, {"images": self._images})
        self._stack.__exit__(*exc)  # commits both, or discards both on an error


def interrupted_line(signal_name: str, done: int, total: int) -> str:
    """What an images run stopped part-way says: what is kept and what is not written."""
    return (
        f"interrupted by {signal_name} after {done} of {total} images: the rendered images are "
        f"kept, {POSES_FILE} and {COCO_RESULTS_FILE} not written"
    )


def finished_line(posed: int, out: Path) -> str:
    """What a finished images run says: where its outputs are."""
    return (
        f"{posed} images posed: {out / POSES_FILE}, {out / COCO_RESULTS_FILE}, rendered images "
        f"in {out}"
    )
