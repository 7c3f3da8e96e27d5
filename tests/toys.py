"""Toy inputs shared by the pose-stage and pipeline tests: a perfect pose model for frames of
bright blobs, so the whole crop -> heatmap -> image chain is checked without trained weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from realtime.pose.estimator import IMAGENET_MEAN, IMAGENET_STD


class DotFinder(nn.Module):
    """Heatmaps = the crop's red channel, average-pooled by the stride: a perfect model for a
    frame whose only content is a bright blob, so the whole crop -> heatmap -> image chain is
    checked without trained weights."""

    def __init__(self, num_keypoints: int = 17) -> None:
        super().__init__()
        self.k = num_keypoints
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so .to(dtype) has work to do

    def forward(self, x):
        red = x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        return (F.avg_pool2d(red, 4) * self.scale).expand(-1, self.k, -1, -1)


def blob_frame(points, size=(360, 480), sigma=5.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    frame = torch.zeros(1, 3, *size)
    for x, y in points:
        frame[0, 0] += 255 * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return frame


class SpreadFinder(DotFinder):
    """DotFinder whose keypoint k sits a few heatmap pixels off the blob (keypoint 0 on it), so
    a pose has an extent and boxes can be made from it."""

    def forward(self, x):
        base = super().forward(x)[:, :1]
        shifts = [(k % 5 - 2, k // 5 - 1) if k else (0, 0) for k in range(self.k)]
        return torch.cat([torch.roll(base, (dy, dx), (2, 3)) for dx, dy in shifts], dim=1)
