"""Frames -> poses: upload, detect, pose, suppress duplicates, one copy to the host, track.

Reads in one sitting, rtmlib-style. `PosePipeline.process(frames)` takes a micro-batch of frames
through the stages together:

1. one upload of the frames (pinned host memory on CUDA), read by the detector and the crops;
2. the person detector on the frames that need it (every `det_every`-th frame of a stream),
   one forward pass for the batch; a frame in between takes boxes interpolated from the
   detections on either side when the next one is in the batch (files), else boxes its
   stream's tracks predict from the previous poses (a camera);
3. boxes made finite, clipped to the frame and checked for size (a failed box takes no part);
4. the pose stage (`PoseEstimator`) on every person of every frame at once;
5. HRNet rescoring, the score threshold and OKS-NMS / Soft-NMS fusion (Eq. (20)-(21)) as masks
   over the whole batch, so no shape depends on the data and nothing waits for the device;
6. the batch's one device->host copy; NaN keypoints are an error here, never "nobody";
7. per frame, in order, on the host: the stream's temporal stage (track ids, fusion).

`stream()` is the generator form over a frame source: a file in micro-batches of about
`batch_size` frames that end on a detected frame, a live source one frame at a time.
Each stream of frames (a video, a browser session) keeps its own `StreamState`
(`realtime.stream.state`); the models are shared. Stage times are `realtime.stream.results`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch import Tensor

from ccm.geometry import boxes_from_keypoints
from ccm.nms import NMS_METHODS, rescore, suppress_duplicates
from ccm.poses import FramePoses
from ccm.skeleton import COCO_SIGMAS
from realtime.detect.detector import Detections, Detector, interpolate_detections
from realtime.io.frames import Frame, rgb_image
from realtime.pose.estimator import PoseEstimator
from realtime.stream.results import FrameResult, StageTimer
from realtime.stream.state import StreamState, plan_detections
from realtime.temporal.stage import TemporalStage

# det_every None: a file's frames are detected every 3rd (boxes in between interpolated from the
# detections on either side), a camera's each: boxes predicted from its tracks cost 4 AP on
# held-out clips (see BENCHMARKS.md, "Live mode on the CPU").
FILE_DET_EVERY = 3
LIVE_DET_EVERY = 1
LIVE_FLIPS = ("always", "between", "alternate", "never")

PeopleHook = Callable[[Frame, Detections], Detections]


@dataclass(frozen=True)
class PipelineConfig:
    """`det_every`: run the detector on every n-th frame of a stream (None: every
    `FILE_DET_EVERY`-th frame of a file, every `LIVE_DET_EVERY`-th of a live source);
    `live_flip`: which of a live stream's frames get the flip test (when the pose stage has it
    on): "always", "between" (the frames between detections, so a detected frame, which pays
    for the detector, skips it), "alternate" (every other frame) or "never";
    `box_keypoint_threshold`: keypoints above it make a camera's boxes between detections;
    `nms`: how duplicate detections of one person merge ("softnms" Eq. (20)-(21), "oks" plain
    OKS-NMS, "none"); `min_pose_score`: people whose score (detector score x mean confident
    keypoint score) falls below it are dropped; `batch_size`: frames of a file that go through
    the models together (a batch ends on a detected frame, so it may hold up to
    `det_every - 1` more); `sync_timing`: wait for the device at each stage boundary so
    per-stage times are exact."""

    det_every: int | None = None
    live_flip: str = "always"
    box_keypoint_threshold: float = 0.3
    nms: str = "softnms"
    nms_threshold: float = 0.9
    min_pose_score: float = 0.05
    batch_size: int = 4
    sync_timing: bool = False

    def __post_init__(self) -> None:
        if self.det_every is not None and self.det_every < 1:
            raise ValueError(f"det_every must be >= 1, got {self.det_every}")
        if self.live_flip not in LIVE_FLIPS:
            raise ValueError(f"unknown live_flip {self.live_flip!r}; choose from {LIVE_FLIPS}")
        if self.nms not in NMS_METHODS:
            raise ValueError(f"unknown nms {self.nms!r}; choose from {NMS_METHODS}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class PosePipeline:
    """detector.detect(images) -> boxes; estimator(images, boxes) -> keypoints; temporal(poses)."""

    def __init__(
        self,
        detector: Detector,
        estimator: PoseEstimator,
        temporal: TemporalStage | None = None,
        config: PipelineConfig = PipelineConfig(),
    ) -> None:
        self.detector = detector
        self.estimator = estimator
        self.config = config
        self.device = estimator.device
        self.state = StreamState(config.det_every or 1, temporal)
        self._sigmas = torch.tensor(COCO_SIGMAS, device=self.device)
        self._pinned: dict[tuple, Tensor] = {}  # host staging buffers by shape

    @property
    def temporal(self) -> TemporalStage | None:
        return self.state.temporal

    def sharing_models(
        self,
        estimator: PoseEstimator | None = None,
        config: PipelineConfig | None = None,
        temporal: TemporalStage | None = None,
    ) -> PosePipeline:
        """Another pipeline on this one's loaded models (the detector; the estimator unless one
        is given) with its own `config` (default: this one's) and temporal stage, and a stream
        of its own: nothing is loaded again."""
        return PosePipeline(
            self.detector, estimator or self.estimator, temporal, config or self.config
        )

    def new_stream(
        self,
        temporal: TemporalStage | None = None,
        det_every: int | None = None,
        live: bool = True,
    ) -> StreamState:
        """A fresh `StreamState` for another stream through the same models (by default a live
        one: a camera, a browser's webcam)."""
        every = det_every or self.config.det_every
        return StreamState(every or (LIVE_DET_EVERY if live else FILE_DET_EVERY), temporal, live)

    def reset(self) -> None:
        """Forget previous frames of the pipeline's own stream (a new video)."""
        self.state.reset()

    def __call__(self, frame: Frame, people: PeopleHook | None = None) -> FrameResult:
        return self.process([frame], people=people)[0]

    def stream(
        self, frames: Iterable[Frame], people: PeopleHook | None = None, live: bool = False
    ) -> Iterator[FrameResult]:
        """Process frames as they come: one at a time when `live` (pass a `FrameStream`'s
        `realtime`), else in micro-batches that end on a detected frame; `decode` is the time
        spent waiting for the batch's frames."""
        self.state.live = live
        if self.config.det_every is None:
            self.state.det_every = LIVE_DET_EVERY if live else FILE_DET_EVERY
        frames = iter(frames)
        while True:
            start = time.perf_counter()
            size = 1 if live else self.state.batch_length(self.config.batch_size)
            batch, error = [], None
            try:
                for frame in islice(frames, size):
                    batch.append(frame)
            except Exception as err:  # a source that fails part-way: pose what came before
                error = err
            decode_ms = (time.perf_counter() - start) * 1000
            if batch:
                for result in self.process(batch, people=people):
                    result.timings = {"decode": decode_ms, **result.timings}
                    yield result
            if error is not None:
                raise error
            if len(batch) < size:
                return

    @torch.inference_mode()
    def process(
        self,
        frames: Sequence[Frame],
        states: Sequence[StreamState] | None = None,
        people: PeopleHook | None = None,
    ) -> list[FrameResult]:
        """Frames (of one stream, in order, or of several streams) -> one result each, in order.

        `states` gives each frame's stream (default: the pipeline's own). Of a stream's frames
        in one call, the last is always detected, so those between take boxes interpolated
        from detections (`StreamState.batch_length` says how many to pass); a stream's only
        frame in a call that is not due for detection takes boxes its tracks predict. `people`
        replaces the detections of the frames the detector ran on (the benchmark fixes the
        people with it; the detector still runs).
        """
        states = [self.state] * len(frames) if states is None else list(states)
        if len(states) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(states)} stream states")
        images = [rgb_image(f.image, f"frame {f.index}") for f in frames]
        results: list[FrameResult | None] = [None] * len(frames)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        for group in by_size.values():
            for i, result in zip(
                group, self._group(frames, images, states, group, people), strict=True
            ):
                results[i] = result
        return results

    def _group(
        self,
        frames: Sequence[Frame],
        images: list[np.ndarray],
        states: list[StreamState],
        group: list[int],
        people: PeopleHook | None,
    ) -> list[FrameResult]:
        """Frames of one size through every stage; one device->host copy for all of them."""
        timer = StageTimer(self.device, self.config.sync_timing)
        pixels = self._upload([images[i] for i in group])  # (B, 3, H, W) uint8
        height, width = pixels.shape[-2:]
        plan = plan_detections(states, group)
        detect = [i for i, (_, _, source) in zip(group, plan, strict=True) if source is None]
        found = {}
        for i, dets in zip(detect, self._detect(pixels, group, detect), strict=True):
            dets = dets if people is None else people(frames[i], dets)
            found[i] = Detections(*(t.to(self.device, torch.float32) for t in dets))
        boxes, box_scores, predicted = [], [], []
        for i, (count, next_count, source) in zip(group, plan, strict=True):
            state = states[i]
            if source is None:
                state.remember_detection(found[i], count)
                b, s = found[i]
            elif source >= 0:  # between two detected frames
                t = (count - state.detected_frame) / (next_count - state.detected_frame)
                b, s = interpolate_detections(state.detected, found[source], t)
            else:  # boxes from the previous poses; their detector scores rescore them
                b = _boxes_from_poses(state, frames[i], self.config, (height, width))
                b, s = _together_to(self.device, b, state.previous_box_scores)
            predicted.append(len(b) if source is not None and source < 0 else None)
            boxes.append(b.to(self.device, torch.float32))
            box_scores.append(s.to(self.device, torch.float32))
        counts = [len(b) for b in boxes]
        frame_of = torch.cat(
            [
                torch.full((n,), k, dtype=torch.long, device=self.device)
                for k, n in enumerate(counts)
            ]
        )
        boxes, box_scores, usable = _sanitize(
            torch.cat(boxes), torch.cat(box_scores), height, width
        )
        timer.lap("detect")
        flip = self.estimator.flips(self._live_flip([states[i] for i in group], bool(detect)))
        keypoints = self.estimator(pixels, boxes, counts, lap=timer.lap, flip=flip)
        packed = self._suppress(boxes, box_scores, keypoints, frame_of, usable)
        host = self._to_host(packed)  # the batch's one device->host copy
        out = []
        for k, rows in enumerate(np.split(host, np.cumsum(counts)[:-1])):
            i = group[k]
            poses, scores = _frame_poses(frames[i], rows, keypoints.shape[1])
            states[i].detections += plan[k][2] is None
            states[i].flips += flip
            poses = states[i].finish_frame(poses, scores, predicted[k])
            out.append(FrameResult(frames[i], poses, batch=len(group), people=counts[k]))
        timer.lap("fuse")
        for result in out:
            result.timings = dict(timer.times)
        return out

    def _live_flip(self, states: list[StreamState], detected: bool) -> bool | None:
        """The flip test for a call of live streams' frames, by `live_flip` (None: the pose
        stage's own choice, as for files)."""
        policy = self.config.live_flip
        if policy == "always" or not all(s.live for s in states):
            return None
        if policy == "alternate":
            return all(s.frames % 2 for s in states)
        return policy == "between" and not detected

    def _detect(self, pixels: Tensor, group: list[int], detect: list[int]) -> list[Detections]:
        """Detections of the frames `detect` (rows of `pixels` by their place in `group`), in
        one batch through the detector."""
        if not detect:
            return []
        rows = [group.index(i) for i in detect]
        if len(rows) < len(group):  # views of the rows, not an index list uploaded to the device
            pixels = torch.cat([pixels[r : r + 1] for r in rows])
        return self.detector.detect(pixels)

    def _suppress(
        self, boxes: Tensor, box_scores: Tensor, keypoints: Tensor, frame_of: Tensor, usable: Tensor
    ) -> Tensor:
        """Rescore, threshold and NMS as masks -> (N, 8 + 3K): box, box score, score, keep,
        broken (a usable box whose keypoints are not finite), keypoints."""
        c = self.config
        broken = usable & ~keypoints.isfinite().flatten(1).all(-1)
        scores = rescore(box_scores, keypoints[..., 2])
        keep = usable & (scores >= c.min_pose_score)
        if c.nms != "none" and len(boxes) > 1:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keypoints, keep = suppress_duplicates(
                keypoints, scores, areas, c.nms_threshold, c.nms == "softnms", frame_of, keep,
                self._sigmas,
            )  # fmt: skip
        flags = torch.stack((keep, broken), dim=1).float()
        columns = (boxes, box_scores[:, None], scores[:, None], flags)
        return torch.cat((*columns, keypoints.flatten(1)), dim=1)

    def _upload(self, images: list[np.ndarray]) -> Tensor:
        """(B, H, W, 3) uint8 host frames -> (B, 3, H, W) on the device, through pinned memory."""
        if self.device.type == "cpu":
            stacked = images[0][None] if len(images) == 1 else np.stack(images)
            return torch.from_numpy(stacked).permute(0, 3, 1, 2)
        shape = (len(images), *images[0].shape)
        buffer = self._pinned.get(shape)
        if buffer is None:
            buffer = self._pinned[shape] = torch.empty(shape, dtype=torch.uint8).pin_memory()
        staging = buffer.numpy()
        for k, image in enumerate(images):
            staging[k] = image
        return buffer.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def _to_host(self, packed: Tensor) -> np.ndarray:
        """The device->host copy, into a pinned buffer kept (and grown) across frames."""
        if self.device.type == "cpu":
            return packed.numpy()
        rows, columns = packed.shape
        buffer = self._pinned.get(("out", columns))
        if buffer is None or len(buffer) < rows:
            buffer = torch.empty(max(rows, 64), columns, dtype=packed.dtype).pin_memory()
            self._pinned["out", columns] = buffer
        host = buffer[:rows]
        host.copy_(packed, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host.numpy().copy()


def _boxes_from_poses(
    state: StreamState, frame: Frame, config: PipelineConfig, size: tuple[int, int]
) -> Tensor:
    """Boxes for a frame without detection: the stream's last poses moved on by their tracks'
    motion where the temporal stage predicts it, else around the last poses as they were."""
    if state.temporal is not None:
        return state.temporal.predicted_boxes(frame.pts, config.box_keypoint_threshold, size)
    return boxes_from_keypoints(
        state.previous.keypoints, config.box_keypoint_threshold, image_size=size
    )


def _together_to(device: torch.device, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes (N, 4) and scores (N,) as float32 on `device`, in one copy when both are
    elsewhere (on the host: one upload, not two)."""
    if boxes.device != scores.device:
        return boxes.to(device, torch.float32), scores.to(device, torch.float32)
    both = torch.cat((boxes.float(), scores.float()[:, None]), 1).to(device)
    return both[:, :4], both[:, 4]


def _sanitize(
    boxes: Tensor, scores: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Whatever the detector gave -> finite boxes inside the frame (an infinite side is clipped to
    the frame's edge), and which are usable: no NaN, a finite score, at least one pixel wide and
    high after clipping."""
    finite = ~boxes.isnan().any(-1) & scores.isfinite()
    boxes = torch.nan_to_num(boxes, nan=0.0)
    x1, y1, x2, y2 = boxes.unbind(-1)
    boxes = torch.stack(
        (x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)), -1
    )
    usable = finite & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return boxes, torch.nan_to_num(scores, nan=0.0), usable


def _frame_poses(frame: Frame, rows: np.ndarray, num_keypoints: int) -> tuple[FramePoses, Tensor]:
    """One frame's packed rows -> its kept poses (best first) and their detector scores."""
    if (rows[:, 7] > 0.5).any():
        raise RuntimeError(
            f"frame {frame.index}: the pose network gave NaN or infinite keypoints; the pose "
            "weights or the input frame are broken"
        )
    rows = rows[rows[:, 6] > 0.5]
    keypoints = rows[:, 8:].reshape(-1, num_keypoints, 3)
    order = np.argsort(-rows[:, 5], kind="stable")
    rows, keypoints = rows[order], keypoints[order]
    poses = FramePoses(
        frame.index,
        frame.pts,
        torch.from_numpy(np.ascontiguousarray(rows[:, :4])),
        torch.from_numpy(np.ascontiguousarray(rows[:, 5])),
        torch.from_numpy(np.ascontiguousarray(keypoints)),
        torch.full((len(rows),), -1, dtype=torch.long),
    )
    return poses, torch.from_numpy(np.ascontiguousarray(rows[:, 4]))
