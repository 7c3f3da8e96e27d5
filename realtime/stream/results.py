"""Per-stage times: the stages a frame is timed in, the lap timer the pipeline runs, and
`FrameResult`, one processed frame with its poses and times."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ccm.poses import FramePoses
from realtime.io.frames import Frame

STAGES = ("decode", "detect", "crop", "pose", "refine", "fuse", "render", "encode")


@dataclass
class FrameResult:
    """One processed frame: the frame, its poses (on the CPU), stage times in ms of the
    micro-batch it went through (`batch` frames), and the people the pose stage ran on."""

    frame: Frame
    poses: FramePoses
    timings: dict[str, float] = field(default_factory=dict)
    batch: int = 1
    people: int = 0

    def frame_ms(self, stage: str) -> float:
        """This frame's share of a stage's time (`frame_share`)."""
        return frame_share(self.timings, self.batch, stage)

    @property
    def latency_ms(self) -> float:
        """From the frame's batch leaving the decoder to its poses being ready."""
        return sum(v for k, v in self.timings.items() if k not in ("decode", "render", "encode"))


def frame_share(timings: dict[str, float], batch: int, stage: str) -> float:
    """One frame's share of a stage's ms: render and encode are the frame's own, the other stages
    ran once for its micro-batch of `batch` frames."""
    ms = timings.get(stage, 0.0)
    return ms if stage in ("render", "encode") else ms / batch


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
