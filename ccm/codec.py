"""Gaussian heatmap targets, and one codec object that owns both directions.

`encode_heatmaps` places a Gaussian at each keypoint: unbiased (DARK Sec. 2.1.2) keeps the
sub-pixel centre, biased rounds it to the nearest pixel as SimpleBaseline and HRNet do.
`HeatmapCodec` pairs that with `ccm.refine.decode_heatmaps` and the crop <-> heatmap map of
`ccm.geometry`, so training targets and inference decoding cannot disagree on a convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ccm.geometry import crop_to_heatmap, heatmap_to_crop
from ccm.refine import DECODE_METHODS, decode_heatmaps


def encode_heatmaps(
    xy: Tensor, size: tuple[int, int], sigma: float = 2.0, unbiased: bool = True
) -> Tensor:
    """Keypoints xy (N, K, 2) in heatmap pixels -> Gaussian heatmaps (N, K, H, W).

    The Gaussian exp(-d^2 / (2 sigma^2)) peaks with value 1 at the keypoint (at the nearest pixel
    centre when `unbiased` is False). Separable, so cost is O(N K (H + W)) before the outer product.
    """
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise ValueError(f"xy must be (N, K, 2), got {tuple(xy.shape)}")
    h, w = size
    centre = xy if unbiased else torch.floor(xy + 0.5)
    xs = torch.arange(w, device=xy.device, dtype=xy.dtype)
    ys = torch.arange(h, device=xy.device, dtype=xy.dtype)
    gx = torch.exp(-((xs - centre[..., :1]) ** 2) / (2 * sigma**2))  # (N, K, W)
    gy = torch.exp(-((ys - centre[..., 1:]) ** 2) / (2 * sigma**2))  # (N, K, H)
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)


def encode_targets(
    keypoints: Tensor, size: tuple[int, int], sigma: float = 2.0, unbiased: bool = True
) -> tuple[Tensor, Tensor]:
    """Training targets for keypoints (N, K, 3) x, y, visibility in heatmap pixels.

    Returns heatmaps (N, K, H, W) and target weights (N, K): weight 1 for a labelled keypoint
    (visibility > 0) whose Gaussian reaches the map (within 3 sigma of it), else 0 with an
    all-zero map, so unlabelled joints add nothing to the loss.
    """
    h, w = size
    xy = keypoints[..., :2]
    reach = 3 * sigma
    on_map = (
        (xy[..., 0] > -reach) & (xy[..., 0] < w - 1 + reach)
        & (xy[..., 1] > -reach) & (xy[..., 1] < h - 1 + reach)
    )  # fmt: skip
    weights = ((keypoints[..., 2] > 0) & on_map).to(keypoints.dtype)
    heatmaps = encode_heatmaps(xy, size, sigma, unbiased) * weights[..., None, None]
    return heatmaps, weights


@dataclass(frozen=True)
class HeatmapCodec:
    """Keypoints in crop pixels <-> heatmaps of a network with input `input_size` (H, W)."""

    input_size: tuple[int, int] = (256, 192)
    heatmap_size: tuple[int, int] = (64, 48)
    sigma: float = 2.0
    unbiased: bool = True
    method: str = "parabola"
    blur_kernel: int = 0

    def __post_init__(self) -> None:
        if self.method not in DECODE_METHODS:
            raise ValueError(f"unknown decode method {self.method!r}; choose from {DECODE_METHODS}")
        sh, sw = (i / o for i, o in zip(self.input_size, self.heatmap_size, strict=True))
        if sh != sw:
            raise ValueError(
                f"input {self.input_size} and heatmap {self.heatmap_size} differ in stride"
            )

    @property
    def stride(self) -> float:
        return self.input_size[1] / self.heatmap_size[1]

    def encode(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        """Keypoints (N, K, 3) x, y, visibility in crop pixels -> (heatmaps, weights)."""
        xy = crop_to_heatmap(keypoints[..., :2], self.stride)
        return encode_targets(
            torch.cat((xy, keypoints[..., 2:]), dim=-1),
            self.heatmap_size,
            self.sigma,
            self.unbiased,
        )

    def decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        """Heatmaps (N, K, H, W) -> keypoints xy (N, K, 2) in crop pixels and scores (N, K)."""
        xy, scores = decode_heatmaps(heatmaps, self.method, self.blur_kernel)
        return heatmap_to_crop(xy, self.stride), scores
