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

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from realtime.batch.inputs import InputFile
from realtime.batch.videos import Renderer, describe_error
from realtime.io.frames import Frame
from realtime.io.sinks import CocoResultsWriter, ImagePosesWriter, write_image, write_json
from realtime.io.sources import read_image
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
    coco_images: list[dict[str, object]] = []
    with (
        ImagePosesWriter(out_dir / POSES_FILE) as poses_out,
        CocoResultsWriter(out_dir / COCO_RESULTS_FILE) as coco,
    ):
        for item in files:
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
                image_id = len(coco_images) + 1
                coco.write(image_id, poses)
                poses_out.write(item.name, report.width, report.height, poses)
                coco_images.append(
                    {"id": image_id, "file_name": item.name,
                     "width": report.width, "height": report.height}
                )  # fmt: skip
                report.people = len(poses)
            except Exception as err:  # a bad image is reported, never aborts the rest
                logger.debug("failed on %s", item.path, exc_info=True)
                report.error = describe_error(err, item.path)
                if report.rendered is not None:  # no output for an image that failed
                    report.rendered.unlink(missing_ok=True)
                    report.rendered = None
            reports.append(report)
            if progress is not None:
                progress(report)
        write_json(out_dir / COCO_IMAGES_FILE, {"images": coco_images})
    return reports
