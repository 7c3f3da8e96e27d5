"""What the benchmark feeds the pipeline: a clip played in a loop, and the people per frame.

People per frame drive the pose-stage cost. A random-weight detector finds a meaningless number
of boxes, so `PeopleOverride` replaces them (the detector still runs and is timed): `fixed=N`
takes the detector's top N boxes, or N boxes tiled over the frame when it finds fewer;
`ground_truth` takes the boxes of a `train.synthetic` video's ground-truth JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor

from realtime.detect.detector import Detections
from realtime.io.frames import Frame
from realtime.io.sources import open_source


def tiled_boxes(count: int, height: int, width: int) -> Tensor:
    """`count` person-shaped boxes (about 1:2) on a grid over the frame, row by row.

    Returns:
        (count, 4) float32 x1, y1, x2, y2 in image pixels, inside the frame.
    """
    cols = min(count, max(1, round(float(np.sqrt(2.0 * count * width / height)))))
    rows = -(-count // cols)
    cell_w, cell_h = width / cols, height / rows
    index = torch.arange(count)
    x1 = (index % cols) * cell_w + 0.1 * cell_w
    y1 = torch.div(index, cols, rounding_mode="floor") * cell_h + 0.05 * cell_h
    return torch.stack((x1, y1, x1 + 0.8 * cell_w, y1 + 0.9 * cell_h), dim=1).float()


def load_ground_truth_boxes(path: Path, width: int, height: int) -> list[Tensor]:
    """Per-frame person boxes from a `train.synthetic` video's JSON (`frames[i][j]["bbox"]`).

    Returns:
        One (N_i, 4) float32 tensor per frame of the clip, x1, y1, x2, y2 in image pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    try:
        data = json.loads(path.read_text())
        frames = data["frames"]
        size = (int(data["width"]), int(data["height"]))
        boxes = [
            torch.tensor([p["bbox"] for p in people], dtype=torch.float32).reshape(-1, 4)
            for people in frames
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: not a train.synthetic ground-truth file (needs width, height and frames of "
            f'[{{"bbox": [x, y, w, h]}}, ...]): {err}'
        ) from err
    if size != (width, height):
        raise ValueError(
            f"{path} describes a {size[0]}x{size[1]} video but the source is {width}x{height}"
        )
    for b in boxes:
        b[:, 2:] += b[:, :2]  # x, y, w, h -> x1, y1, x2, y2
    return boxes


class PeopleOverride:
    """The pipeline's `people` hook: replaces the detector's boxes with a chosen set (the detector
    still runs, so its time is real).

    With neither `fixed` nor `ground_truth` it passes the detections through. Ground truth is
    indexed by the frame's place in the clip (`frame.index` modulo its length). Boxes it makes up
    get score 1, so the pipeline's rescoring keeps them.
    """

    def __init__(self, fixed: int | None = None, ground_truth: list[Tensor] | None = None) -> None:
        self.fixed = fixed
        self.ground_truth = ground_truth
        self.detected: list[int] = []  # boxes the detector itself found, per call
        self._device_boxes: dict[tuple, Tensor] = {}

    def __call__(self, frame: Frame, found: Detections) -> Detections:
        boxes, scores = found
        self.detected.append(len(boxes))
        device = boxes.device
        if self.ground_truth is not None:
            index = frame.index % len(self.ground_truth)
            boxes = self._on(device, ("truth", index), lambda: self.ground_truth[index])
            return Detections(boxes, torch.ones(len(boxes), device=device))
        if self.fixed is not None:
            if len(boxes) >= self.fixed:  # detections come sorted by score, best first
                return Detections(boxes[: self.fixed], scores[: self.fixed])
            size = frame.image.shape[:2]
            boxes = self._on(device, size, lambda: tiled_boxes(self.fixed, *size))
            return Detections(boxes, torch.ones(self.fixed, device=device))
        return found

    def _on(self, device: torch.device, key: object, make) -> Tensor:
        """Boxes made (on the host) once and kept on the detector's device: no upload per
        frame."""
        cached = self._device_boxes.get((device, key))
        if cached is None:
            cached = self._device_boxes[device, key] = make().to(device)
        return cached


# ----------------------------------------------------------------------------- frames


class ClipLoop:
    """The frames of a video file, played again from the start as often as needed.

    `threaded` reads through `open_source` (a reader thread decoding ahead, as `app.py video`);
    otherwise frames are decoded on the calling thread when asked for. Frame index and pts keep
    counting across passes.
    """

    def __init__(self, path: Path, threaded: bool) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"benchmark source not found (a video file): {self.path}")
        probe = open_source(self.path, realtime=False, queue_size=1)  # raises on a bad file
        self.info = probe.info
        probe.close()
        self.threaded = threaded
        self.passes = 0
        self._frames = self._generate()

    def __iter__(self) -> ClipLoop:
        return self

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()

    def _generate(self) -> Iterator[Frame]:
        index = 0
        while True:
            self.passes += 1
            first = index
            for image in self._decode():
                yield Frame(index, index / self.info.fps, image, time.monotonic())
                index += 1
            if index == first:
                raise ValueError(f"{self.path}: no frame could be decoded")

    def _decode(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB images of one pass over the clip."""
        if self.threaded:
            with open_source(self.path, realtime=False) as source:
                for frame in source:
                    yield frame.image
            return
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # as the reader thread of `open_source` decodes
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
