"""The contract between the pipeline and a temporal stage (`TemporalStage`)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from ccm.poses import FramePoses


class TemporalStage(Protocol):
    """One stream's temporal state, called once per frame after the pose stage.

    `stage(poses)` takes the frame's poses (image pixels, host tensors after the pipeline's one
    device->host copy) and returns the same people in the same order with track ids and fused
    keypoints; `reset()` forgets every track (a new video); `predicted_boxes` gives a frame
    without detection one box per person of the last frame, moved on to `pts` seconds.
    `method` names the fusion, as `TemporalConfig.method` does.
    """

    @property
    def method(self) -> str: ...

    def __call__(self, poses: FramePoses) -> FramePoses: ...

    def reset(self) -> None: ...

    def predicted_boxes(
        self, pts: float, score_thr: float = 0.3, image_size: tuple[int, int] | None = None
    ) -> Tensor:
        """(N, 4) x1, y1, x2, y2 in image pixels for the last frame's N people at `pts`."""
        ...
