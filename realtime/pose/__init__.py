"""The pose stage: person boxes on device frames -> keypoints in image pixels.

`PoseEstimator(model, pose_config, PoseStageConfig(...))` cuts every person's crop (and its mirror
for the flip test) in one batch, runs the network on a backend (`eager`, `compile`, `tensorrt`
in `tensorrt.py`; fused oneDNN convolutions on the CPU in `cpu_fusion.py`) and decodes the
heatmaps with the one `ccm.codec` chain.
"""

from realtime.pose.config import BACKENDS, PRECISIONS, PoseStageConfig
from realtime.pose.estimator import PoseEstimator

__all__ = ["BACKENDS", "PRECISIONS", "PoseStageConfig", "PoseEstimator"]
