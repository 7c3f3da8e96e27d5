"""The temporal stage: track ids and fusion of each track's keypoints over frames.

`TemporalStage` is the contract the pipeline calls once per frame of a stream;
`TemporalFusion(TemporalConfig(method=...))` meets it with association (`tracking.py`) and one
of the fusions: Kalman per keypoint (`kalman.py`), temporal Soft-NMS or 1-euro (`smoothing.py`).
"""

from realtime.temporal.fusion import METHODS, TemporalConfig, TemporalFusion
from realtime.temporal.stage import TemporalStage

__all__ = ["METHODS", "TemporalConfig", "TemporalFusion", "TemporalStage"]
