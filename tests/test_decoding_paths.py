"""Evaluation, pseudo-labelling and the realtime pose stage decode heatmaps through one codec:
the same maps of the same regions give the same image keypoints in all three."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ccm.checkpoint import PoseConfig
from ccm.codec import encode_heatmaps
from realtime.pose.config import PoseStageConfig
from realtime.pose.estimator import PoseEstimator
from train.annotations import Instance
from train.evaluate import EvalConfig, decode_poses, eval_loader, iter_heatmaps
from train.pseudo_label import pseudo_label

# An imported (msra) checkpoint with its SSP alpha, so mapping and flip fusion both matter.
POSE = PoseConfig("ccm_mobilenetv2", input_size=(128, 96), flip_alpha=0.75, heatmap_mapping="msra")
BOXES = [(40.0, 30.0, 120.0, 200.0), (150.5, 60.25, 230.0, 210.0), (10.0, 100.0, 70.0, 230.0)]


class FixedMaps(nn.Module):
    """A network that answers every batch with the same maps: (N, K, h, w) for N crops, then
    those of the mirrored crops when called on 2N (the flip test)."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("maps", maps)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.maps[: crops.shape[0]].to(crops.dtype)


def test_one_codec_gives_identical_keypoints_in_evaluation_pseudo_labels_and_realtime(
    tmp_path: Path,
) -> None:
    g = torch.Generator().manual_seed(0)
    n, (h, w) = len(BOXES), POSE.heatmap_size
    xy = torch.rand(2 * n, 17, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 6, h - 6])
    maps = encode_heatmaps(xy + 3, (h, w)).float() * (
        0.5 + torch.rand(2 * n, 17, 1, 1, generator=g)
    )
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((240, 320, 3), np.uint8))
    instances = [Instance(image, 1, box, np.zeros((17, 3))) for box in BOXES]

    # Realtime: the pose stage on a frame with those boxes.
    config = PoseStageConfig(
        decoder="dark", blur_kernel=5, precision="fp32"
    )  # the maps as they are
    estimator = PoseEstimator(FixedMaps(maps), POSE, config)
    realtime = estimator(torch.zeros(1, 3, 240, 320), torch.tensor(BOXES)).double()

    # Evaluation: the COCO path, flip test on.
    loader = eval_loader(instances, POSE, batch_size=8)
    (predicted,) = iter_heatmaps(FixedMaps(maps), loader, flip=True, device="cpu")
    config = EvalConfig(flip=True, decoder="dark", blur_kernel=5)
    evaluated = decode_poses(predicted, config, POSE).keypoints.double()
    torch.testing.assert_close(evaluated, realtime, rtol=0, atol=1e-6)

    # Pseudo-labels: the teacher's fused maps, written to 2 decimals.
    labels = pseudo_label([(FixedMaps(maps), POSE)], instances, True, "dark", 5, 0.0)
    labelled = torch.tensor([a["keypoints"] for a in labels], dtype=torch.float64).view(n, 17, 3)
    torch.testing.assert_close(labelled[..., :2], realtime[..., :2], rtol=0, atol=0.005 + 1e-9)
    assert (labelled[..., 2] == 2).all()

    # The keypoints are where the maps say: not a trivial agreement on a constant.
    spread = realtime[..., :2].flatten(0, 1).std(0)
    assert (spread > 20).all()
