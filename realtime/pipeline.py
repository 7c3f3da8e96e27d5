"""Frame -> poses: detect, crop, pose, refine, fuse, with a timer on every stage.

Reads in one sitting, rtmlib-style: `PosePipeline(frame)` runs the person detector every
`det_every` frames (boxes come from the previous poses in between), the pose engine on all people
at once, optional Soft-NMS fusion of duplicate detections (Eq. (20)-(21)), the temporal stage, and
one device->host copy of the result. `stream()` is the generator form over a frame source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ccm.nms import oks_nms, rescore, soft_nms_fusion
from realtime.detector import boxes_from_keypoints
from realtime.engine import PoseEngine
from realtime.results import FramePoses
from realtime.sources import Frame

STAGES = ("decode", "detect", "crop", "pose", "refine", "fuse", "render", "encode")
NMS_METHODS = ("softnms", "oks", "none")


@dataclass(frozen=True)
class PipelineConfig:
    """`det_every`: run the detector on every n-th frame; `box_keypoint_threshold`: keypoints
    above it make the boxes of the frames in between; `nms`: how duplicate detections of one
    person merge ("softnms" Eq. (20)-(21), "oks" plain OKS-NMS, "none"); `min_pose_score`: people
    whose score (detector score x mean confident keypoint score) falls below it are dropped;
    `sync_timing`: wait for the device at each stage boundary so per-stage times are exact."""

    det_every: int = 1
    box_keypoint_threshold: float = 0.3
    nms: str = "softnms"
    nms_threshold: float = 0.9
    min_pose_score: float = 0.05
    sync_timing: bool = False

    def __post_init__(self) -> None:
        if self.det_every < 1:
            raise ValueError(f"det_every must be >= 1, got {self.det_every}")
        if self.nms not in NMS_METHODS:
            raise ValueError(f"unknown nms {self.nms!r}; choose from {NMS_METHODS}")


@dataclass
class FrameResult:
    """One processed frame: the frame, its poses (on the CPU) and stage times in ms."""

    frame: Frame
    poses: FramePoses
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        """From the frame leaving the decoder to its poses being ready."""
        return sum(v for k, v in self.timings.items() if k not in ("decode", "render", "encode"))


class StageTimer:
    """Wall-clock laps in ms; with `sync`, waits for the device first so each lap is its own."""

    def __init__(self, device: torch.device, sync: bool) -> None:
        self.sync = sync and device.type == "cuda"
        self.device = device
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.sync:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + (now - self._last) * 1000
        self._last = now


class PosePipeline:
    """detector(image) -> (boxes, scores); engine(frame, boxes) -> keypoints; temporal(poses)."""

    def __init__(
        self,
        detector: Callable[[object], tuple[Tensor, Tensor]],
        engine: PoseEngine,
        temporal: Callable[[FramePoses], FramePoses] | None = None,
        config: PipelineConfig = PipelineConfig(),
    ) -> None:
        self.detector = detector
        self.engine = engine
        self.temporal = temporal
        self.config = config
        self.device = engine.device
        self._previous: FramePoses | None = None
        self._previous_box_scores: Tensor | None = None  # detector scores, aligned with _previous
        self._frames = 0

    def reset(self) -> None:
        """Forget previous frames (a new video)."""
        self._previous = None
        self._previous_box_scores = None
        self._frames = 0
        if self.temporal is not None and hasattr(self.temporal, "reset"):
            self.temporal.reset()

    @torch.inference_mode()
    def __call__(self, frame: Frame) -> FrameResult:
        timer = StageTimer(self.device, self.config.sync_timing)
        image = torch.from_numpy(frame.image).to(self.device, non_blocking=True)
        image = image.permute(2, 0, 1).unsqueeze(0)
        boxes, box_scores = self._boxes(frame)
        timer.lap("detect")
        batch = self.engine.crop(image, boxes)
        timer.lap("crop")
        self.engine.infer(batch)
        timer.lap("pose")
        keypoints = self.engine.refine(batch)
        timer.lap("refine")
        poses = self._fuse(frame, boxes, box_scores, keypoints)
        poses = poses.cpu()  # the frame's one device->host copy
        timer.lap("fuse")
        self._previous = poses
        self._frames += 1
        return FrameResult(frame, poses, timer.times)

    def stream(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        """Process frames as they come (a FrameSource, or any iterable of Frame)."""
        last = time.perf_counter()
        for frame in frames:
            decode_ms = (time.perf_counter() - last) * 1000
            result = self(frame)
            result.timings = {"decode": decode_ms, **result.timings}
            yield result
            last = time.perf_counter()

    def _boxes(self, frame: Frame) -> tuple[Tensor, Tensor]:
        previous = self._previous
        reuse = (
            self._frames % self.config.det_every != 0 and previous is not None and len(previous) > 0
        )
        if not reuse:
            boxes, scores = self.detector(frame.image)
            return boxes.to(self.device, torch.float32), scores.to(self.device, torch.float32)
        height, width = frame.image.shape[:2]
        boxes = boxes_from_keypoints(
            previous.keypoints.to(self.device),
            self.config.box_keypoint_threshold,
            image_size=(height, width),
        )
        return boxes, self._previous_box_scores

    def _fuse(
        self, frame: Frame, boxes: Tensor, box_scores: Tensor, keypoints: Tensor
    ) -> FramePoses:
        scores = rescore(box_scores, keypoints[..., 2])
        keep = scores >= self.config.min_pose_score
        boxes, box_scores, scores, keypoints = (
            boxes[keep],
            box_scores[keep],
            scores[keep],
            keypoints[keep],
        )
        if self.config.nms != "none" and len(boxes) > 1:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            if self.config.nms == "softnms":
                keypoints, scores, index = soft_nms_fusion(
                    keypoints, scores, areas, self.config.nms_threshold
                )
            else:
                index = oks_nms(keypoints, scores, areas, self.config.nms_threshold)
                keypoints, scores = keypoints[index], scores[index]
            boxes, box_scores = boxes[index], box_scores[index]
        # Frames without detection rescore with these, not with the already rescored scores.
        self._previous_box_scores = box_scores
        track_ids = torch.full((len(boxes),), -1, dtype=torch.long, device=boxes.device)
        poses = FramePoses(frame.index, frame.pts, boxes, scores, keypoints, track_ids)
        # The temporal stage keeps the order of people, so the box scores stay aligned.
        return self.temporal(poses) if self.temporal is not None else poses
