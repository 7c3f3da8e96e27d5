"""What one stream of frames (a video, a browser session) remembers between micro-batches, and
which of its frames are detected."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ccm.poses import FramePoses
from realtime.detect.detector import Detections
from realtime.temporal.stage import TemporalStage


@dataclass
class StreamState:
    """What one stream of frames remembers: its detection interval, whether it is live (a camera:
    one frame at a time, boxes between detections predicted from its tracks), its temporal
    stage, the frames it has had (and of them how many were detected and flipped), the last
    detected frame's detections (on the device), the previous frame's poses (host tensors) with
    their detector scores, for the frames between detections, and whether a track was lost on
    the previous frame (a predicted box gave no pose: the next frame is detected)."""

    det_every: int = 1
    temporal: TemporalStage | None = None
    live: bool = False
    previous: FramePoses | None = None
    previous_box_scores: Tensor | None = None
    frames: int = 0
    detections: int = 0
    flips: int = 0
    detected: Detections | None = None
    detected_frame: int = 0
    lost: bool = False

    def reset(self) -> None:
        """Forget previous frames (a new video)."""
        self.previous = None
        self.previous_box_scores = None
        self.frames = self.detections = self.flips = 0
        self.detected = None
        self.lost = False
        if self.temporal is not None:
            self.temporal.reset()

    def remember_detection(self, detections: Detections, count: int) -> None:
        """The detections of this stream's frame number `count`, for the frames up to the next
        detected one."""
        self.detected, self.detected_frame = detections, count

    def finish_frame(
        self, poses: FramePoses, box_scores: Tensor, predicted: int | None = None
    ) -> FramePoses:
        """The next frame's poses through the stream's temporal stage; remembered, with their
        detector scores, for the frames without detection. `predicted` is how many boxes the
        tracks predicted for it (None: it was detected); fewer poses than that is a lost track.
        Returns the poses to show."""
        self.lost = predicted is not None and len(poses) < predicted
        if self.temporal is not None:
            poses = self.temporal(poses)
        self.previous, self.previous_box_scores = poses, box_scores
        self.frames += 1
        return poses

    def needs_detection(self, ahead: int = 0) -> bool:
        """Whether the frame `ahead` frames after the next one is a detected frame. The next one
        is also detected when there is nothing to take boxes from, or a track was lost."""
        if (self.frames + ahead) % self.det_every == 0:
            return True
        nothing = self.detected is None or self.previous is None or not len(self.previous)
        return ahead == 0 and (nothing or self.lost)

    def batch_length(self, size: int) -> int:
        """Frames for the next micro-batch of about `size`: through a detected frame, so the
        frames before it take boxes from the detections on either side."""
        end = self.frames + size - 1
        return -(-end // self.det_every) * self.det_every - self.frames + 1


def plan_detections(
    states: list[StreamState], group: list[int]
) -> list[tuple[int, int, int | None]]:
    """Per frame of `group`: (its number in its stream, the number of its stream's next detected
    frame in the call, where its boxes come from): None to detect it, that next frame's index to
    interpolate, -1 to predict them from the stream's tracks."""
    plan: list[tuple[int, int, int | None]] = [(0, 0, None)] * len(group)
    by_stream: dict[int, list[int]] = {}
    for k, i in enumerate(group):
        by_stream.setdefault(id(states[i]), []).append(k)
    for ks in by_stream.values():
        state = states[group[ks[0]]]
        source, next_count = -1, 0
        for j in reversed(range(len(ks))):
            count = state.frames + j
            if state.needs_detection(j) or (j == len(ks) - 1 and j > 0):
                plan[ks[j]] = (count, count, None)
                source, next_count = group[ks[j]], count
            else:
                plan[ks[j]] = (count, next_count, source)
    return plan
