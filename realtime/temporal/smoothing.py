"""Smoothing for the temporal stage: each track's poses fused over time (docs/temporal.md).

`soft_nms_fuse` is temporal Soft-NMS fusion (Eq. (20) across frames), `kalman_fuse` the
per-keypoint Kalman fusion (`realtime.temporal.kalman`), `one_euro_filter` the 1-euro filter;
each takes a frame's detections with their tracks (`realtime.temporal.tracking`) and returns
the x, y to show.
`realtime.temporal.fusion` says which runs and how they fit together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ccm.nms import oks
from realtime.temporal.kalman import (
    KalmanConfig,
    kalman_predict,
    kalman_update,
    measurement_variance,
    unswap,
)
from realtime.temporal.tracking import Tracks, TrackWindow, confident, scatter


@dataclass(frozen=True)
class OneEuroConfig:
    """1-euro filter parameters: cutoffs in Hz, `beta` in Hz per (pixel / second) of speed."""

    min_cutoff: float = 1.0
    beta: float = 0.05
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if not (self.min_cutoff > 0 and self.d_cutoff > 0 and self.beta >= 0):
            raise ValueError(f"need min_cutoff > 0, d_cutoff > 0 and beta >= 0; got {self}")


def paired_oks(a: Tensor, b: Tensor, areas: Tensor, sigmas: Tensor | Sequence[float]) -> Tensor:
    """OKS of every pose in a (N, W, K, 3) against b (N, K, 3) of the same row -> (N, W).

    b is the ground truth of `ccm.nms.oks` (its third channel is the visibility mask, areas (N,)
    its areas); computed as the diagonal blocks of one batched `oks` call.
    """
    n, w, k, _ = a.shape
    full = oks(a.reshape(n * w, k, 3), b, areas, sigmas).view(n, w, n)
    return torch.diagonal(full, dim1=0, dim2=2).T


def window_velocity(xy: Tensor, age: Tensor, usable: Tensor) -> Tensor:
    """Least-squares slope over time of each keypoint's usable estimates.

    xy (N, W, K, 2) pixels, age (N, W) seconds before now, usable (N, W, K) bool.
    Returns (N, K, 2) pixels per second; 0 where fewer than two distinct times are usable.
    """
    m = usable.to(xy.dtype)
    t = -age[..., None]  # (N, W, 1)
    count = m.sum(1).clamp(min=1)  # (N, K)
    t_mean = (m * t).sum(1) / count
    xy_mean = (m[..., None] * xy).sum(1) / count[..., None]
    dt = (t - t_mean[:, None]) * m  # (N, W, K)
    sxx = (dt * dt).sum(1)
    sxy = (dt[..., None] * (xy - xy_mean[:, None])).sum(1)
    return torch.where(sxx[..., None] > 0, sxy / sxx.clamp(min=1e-12)[..., None], 0.0)


def one_euro_step(
    x: Tensor, x_prev: Tensor, dx_prev: Tensor, te: Tensor, config: OneEuroConfig
) -> tuple[Tensor, Tensor]:
    """One 1-euro step (Casiez et al. 2012) for 2D points.

    x, x_prev (filtered), dx_prev (filtered, per second): (N, K, 2) pixels; te (N,) seconds since
    the previous sample, > 0. Returns the filtered (x, dx). The adaptive cutoff uses the speed
    |dx| of the 2D point, so x and y share one cutoff and the filter does not depend on the axes.
    """
    te = te[:, None, None]

    def alpha(cutoff: Tensor | float) -> Tensor:
        r = 2 * math.pi * cutoff * te
        return r / (r + 1)

    a_d = alpha(config.d_cutoff)
    dx = a_d * (x - x_prev) / te + (1 - a_d) * dx_prev
    cutoff = config.min_cutoff + config.beta * dx.norm(dim=-1, keepdim=True)
    a = alpha(cutoff)
    return a * x + (1 - a) * x_prev, dx


def soft_nms_fuse(
    win: TrackWindow,
    kpts: Tensor,
    areas: Tensor,
    sigmas: Tensor,
    score_threshold: float,
    fusion_min_oks: float,
    half_life_s: float | None,
) -> tuple[Tensor, Tensor]:
    """Temporal Soft-NMS fusion, Eq. (20) across frames.

    kpts (N, K, 3), areas (N,) in image pixels; sigmas (K,). Returns the fused x, y
    (N, K, 2) and the window's velocity (N, K, 2) in pixels per second.
    """
    usable = win.valid[..., None] & (win.score >= score_threshold)  # (N, W, K)
    velocity = window_velocity(win.xy, win.age, usable)
    # Motion compensation: every estimate moved to the current time.
    moved = win.xy + velocity[:, None] * win.age[..., None, None]
    truth = torch.cat([kpts[..., :2], confident(kpts[..., 2], score_threshold)[..., None]], -1)
    similarity = paired_oks(torch.cat([moved, win.score[..., None]], -1), truth, areas, sigmas)
    # Lambda: the old estimates similar enough to the current pose; OKS-IOU as the weight.
    weight = torch.where(win.valid & (similarity >= fusion_min_oks), similarity, 0.0)
    if half_life_s is not None:
        weight = weight * torch.exp2(-win.age / half_life_s)
    weight = weight[..., None] * usable  # (N, W, K): low-scored old keypoints pull nothing
    weight = torch.cat([torch.ones_like(weight[:, :1]), weight[:, 1:]], 1)  # OKS_ii = 1
    fused = (weight[..., None] * moved).sum(1) / weight.sum(1)[..., None]  # Eq. (20)
    return fused, velocity


def one_euro_filter(
    s: Tracks, slot: Tensor, started: Tensor, xy: Tensor, config: OneEuroConfig
) -> Tensor:
    """1-euro filter the detections' x, y (N, K, 2) on their tracks; a new track starts raw."""
    idx = slot.clamp(min=0)
    fresh = ((slot < 0) | started[idx])[:, None, None]
    x, dx = one_euro_step(xy, s.euro_x[idx], s.euro_dx[idx], s.since[idx].clamp(min=1e-6), config)
    x = torch.where(fresh, xy, x)
    dx = torch.where(fresh, 0.0, dx)
    s.euro_x = scatter(x, slot, s.euro_x)
    s.euro_dx = scatter(dx, slot, s.euro_dx)
    return x


def kalman_fuse(
    s: Tracks, slot: Tensor, started: Tensor, kpts: Tensor, areas: Tensor, config: KalmanConfig
) -> tuple[Tensor, Tensor]:
    """Kalman-fuse the detections' keypoints (N, K, 3) on their tracks; returns x, y (N, K, 2)
    and the keypoint scores (N, K), which move with the limbs mirrored back.

    A new track starts at its estimate, at rest, with the estimate's variance and a wide
    speed uncertainty; a detection without a track passes through raw.
    """
    idx = slot.clamp(min=0)
    z, score = kpts[..., :2], kpts[..., 2]
    scale = areas.clamp(min=1.0).sqrt()
    dt = s.since[idx].clamp(min=1e-6)
    xp, p = kalman_predict(s.kf_x[idx], s.kf_v[idx], s.kf_p[idx], scale, dt, s.accel)
    fresh = (slot < 0) | started[idx]  # (N,)
    if config.swap_ratio > 0:
        var = p[..., 0] + measurement_variance(score, scale, config)
        allowed = ~fresh[:, None].expand(-1, s.groups.shape[1])
        z, score, _ = unswap(z, score, xp, var, s.flip, s.groups, allowed, config)
    r = measurement_variance(score, scale, config)
    x, v, p = kalman_update(xp, s.kf_v[idx], p, z, score, r, config)
    start_p = torch.stack(
        [r, torch.zeros_like(r), (config.start_speed * scale)[:, None].square().expand_as(r)], -1
    )
    x = torch.where(fresh[:, None, None], z, x)
    v = torch.where(fresh[:, None, None], 0.0, v)
    p = torch.where(fresh[:, None, None], start_p, p)
    s.kf_x = scatter(x, slot, s.kf_x)
    s.kf_v = scatter(v, slot, s.kf_v)
    s.kf_p = scatter(p, slot, s.kf_p)
    return x, score


def within_reach(xy: Tensor, boxes: Tensor) -> Tensor:
    """Fused x, y (N, K, 2) kept within one box size of the person's current box (N, 4): fusion
    moves a joint by its motion between frames, and a prediction that overshoots further (a track
    of wild estimates) is not where the network looked."""
    size = boxes[:, 2:] - boxes[:, :2]
    lo, hi = boxes[:, None, :2] - size[:, None], boxes[:, None, 2:] + size[:, None]
    return torch.minimum(torch.maximum(xy, lo), hi)
