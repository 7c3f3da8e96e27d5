"""Gaussian heatmap targets, and one codec object that owns both directions.

`encode_heatmaps` places a Gaussian at each keypoint: unbiased (DARK Sec. 2.1.2) keeps the
sub-pixel centre, biased rounds it to the nearest pixel as SimpleBaseline and HRNet do.
`HeatmapCodec` pairs that with `ccm.refine.decode_heatmaps` and the maps of `ccm.geometry`, so
training targets and inference decoding cannot disagree on a convention. Its `to_image` is the
whole heatmap -> image chain (flip fusion with SSP, GF, the decoder, the checkpoint's heatmap
mapping, heatmap grid -> image pixels); the realtime pose stage, COCO evaluation and
pseudo-labelling all decode through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ccm.geometry import (
    check_heatmap_mapping,
    crop_to_heatmap,
    grid_to_image,
    heatmap_to_crop,
    to_pixel_center_heatmap,
)
from ccm.refine import DECODE_METHODS, decode_heatmaps, fuse_flip
from ccm.skeleton import flip_permutation


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
    """Keypoints in crop pixels <-> heatmaps of a network with input `input_size` (H, W).

    `heatmap_mapping` is how the network's heatmap pixels relate to crop pixels
    (`ccm.geometry.HEATMAP_MAPPINGS`; "pixel-center" for models trained here); `flip_alpha` is the
    SSP shift of the flip test (Eq. (22)) that suits it. Decoding always answers in this
    project's pixel-centre convention.
    """

    input_size: tuple[int, int] = (256, 192)
    heatmap_size: tuple[int, int] = (64, 48)
    sigma: float = 2.0
    unbiased: bool = True
    method: str = "parabola"
    blur_kernel: int = 0
    heatmap_mapping: str = "pixel-center"
    flip_alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in DECODE_METHODS:
            raise ValueError(f"unknown decode method {self.method!r}; choose from {DECODE_METHODS}")
        sh, sw = (i / o for i, o in zip(self.input_size, self.heatmap_size, strict=True))
        if sh != sw:
            raise ValueError(
                f"input {self.input_size} and heatmap {self.heatmap_size} differ in stride"
            )
        check_heatmap_mapping(self.heatmap_mapping)
        if not 0.0 <= self.flip_alpha <= 1.0:
            raise ValueError(f"SSP alpha must be in [0, 1], got {self.flip_alpha}")

    @property
    def stride(self) -> float:
        return self.input_size[1] / self.heatmap_size[1]

    def encode(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        """Keypoints (N, K, 3) x, y, visibility in crop pixels -> (heatmaps, weights).

        Targets are always in this project's pixel-centre convention (models trained here)."""
        xy = crop_to_heatmap(keypoints[..., :2], self.stride)
        return encode_targets(
            torch.cat((xy, keypoints[..., 2:]), dim=-1),
            self.heatmap_size,
            self.sigma,
            self.unbiased,
        )

    def fuse_flip(self, heatmaps: Tensor, flipped: Tensor) -> Tensor:
        """The flip test, Eq. (22): maps (N, K, h, w) of the crops and of their mirror images ->
        the fused maps (N, K, h, w)."""
        perm = flip_permutation(heatmaps.shape[1])
        return fuse_flip(heatmaps, flipped, perm, self.flip_alpha)

    def decode_heatmap(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        """Heatmaps (N, K, h, w) -> xy (N, K, 2) in this project's heatmap pixels, scores (N, K).

        GF and the sub-pixel decoder, then the network's heatmap mapping -> pixel-centre."""
        xy, scores = decode_heatmaps(heatmaps, self.method, self.blur_kernel)
        xy = to_pixel_center_heatmap(xy, self.heatmap_mapping, self.input_size, self.heatmap_size)
        return xy, scores

    def decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        """Heatmaps (N, K, h, w) -> keypoints xy (N, K, 2) in crop pixels and scores (N, K)."""
        xy, scores = self.decode_heatmap(heatmaps)
        return heatmap_to_crop(xy, self.stride), scores

    def to_image(
        self, heatmaps: Tensor, center: Tensor, scale: Tensor, flipped: Tensor | None = None
    ) -> Tensor:
        """The whole chain: heatmaps (N, K, h, w) (and those of the mirrored crops, for the flip
        test) of regions with centre and size (N, 2) in image pixels -> keypoints (N, K, 3) x, y
        in image pixels and score, float32. A person whose maps hold NaN or inf gets NaN keypoints,
        so broken weights or inputs cannot pass for "nobody found"."""
        if flipped is not None:
            heatmaps = self.fuse_flip(heatmaps, flipped)
        heatmaps = heatmaps.float()
        xy, scores = self.decode_heatmap(heatmaps)
        xy = grid_to_image(xy, center.float(), scale.float(), self.heatmap_size)
        keypoints = torch.cat((xy, scores.unsqueeze(-1)), dim=-1)
        finite = heatmaps.isfinite().flatten(1).all(-1)
        return torch.where(finite[:, None, None], keypoints, torch.nan)
