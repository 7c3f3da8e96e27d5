"""Per-keypoint Kalman fusion for the temporal stage (`realtime.temporal.fusion`, method "kalman").

Pure batched torch functions on (N, K, ...) tensors, N people and K keypoints in image pixels;
each keypoint is a constant-velocity Kalman filter whose x and y share one covariance. Lengths in
`KalmanConfig` are fractions of the person's size s = sqrt(box area) and times are seconds, so
one setting fits near and far people and any frame rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# COCO-17 limbs that a pose network swaps as a whole: both arms (elbows, wrists), both legs
# (knees, ankles).
COCO_LIMB_PAIRS: tuple[tuple[int, ...], ...] = ((7, 8, 9, 10), (13, 14, 15, 16))


def limb_accelerations(trunk: float, middle: float, distal: float) -> tuple[float, ...]:
    """Per COCO-17 keypoint: `trunk` for the face, shoulders and hips (they ride on the body's
    steady motion), `middle` for elbows and knees, `distal` for wrists and ankles (they swing)."""
    return (
        (trunk,) * 7 + (middle,) * 2 + (distal,) * 2 + (trunk,) * 2 + (middle,) * 2 + (distal,) * 2
    )


@dataclass(frozen=True)
class KalmanConfig:
    """Per-keypoint constant-velocity Kalman filter; lengths are fractions of the person's size
    s = sqrt(box area), so one setting fits near and far people.

    noise: the pose network's error, standard deviation per axis, at keypoint score 0; it falls
        linearly with the score c, as noise * s * max(1 - c, min_miss) (the demo model's median
        error is about 0.13 s (1 - c) on held-out synthetic clips).
    accel: per keypoint, the white-noise acceleration that the motion model allows, in s per
        second^1.5 (the larger, the more the filter follows the current estimate). A swinging
        wrist needs far more than a hip riding on the body's steady walk.
    gate: an estimate more than gate sigmas from its prediction is surprising. When its score is
        at least `trust_score` the joint moved in a way the model did not foresee: the
        prediction's variance is widened until the estimate is gate sigmas away (a shorter memory
        for that joint), so a fast swing is not flattened. Below `trust_score` the estimate is more
        likely a misplaced joint, and its own variance is widened instead.
    min_miss: the least 1 - score in the noise model, so a score of 1 still has some error.
    start_speed: the speed uncertainty of a new track, s per second.
    swap_ratio: a limb pair (`TemporalConfig.swap_groups`) whose estimates, mirrored left for
        right, fit the prediction better by this factor is mirrored back; 0 turns that off.
    """

    noise: float = 0.1
    accel: tuple[float, ...] = limb_accelerations(0.1, 3.0, 10.0)
    gate: float = 2.0
    min_miss: float = 0.1
    start_speed: float = 1.0
    swap_ratio: float = 0.5
    trust_score: float = 0.5

    def __post_init__(self) -> None:
        if not (self.noise > 0 and self.gate > 0 and self.start_speed > 0) or not all(
            a > 0 for a in self.accel
        ):
            raise ValueError(f"need noise, accel, gate and start_speed > 0; got {self}")
        if not 0 < self.min_miss <= 1:
            raise ValueError(f"min_miss must be in (0, 1]; got {self.min_miss}")
        if not (0 <= self.swap_ratio < 1 and 0 <= self.trust_score <= 1):
            raise ValueError(
                f"need swap_ratio in [0, 1) and trust_score in [0, 1]; got {self.swap_ratio}, "
                f"{self.trust_score}"
            )


def kalman_predict(
    x: Tensor, v: Tensor, p: Tensor, scale: Tensor, dt: Tensor, accel: Tensor
) -> tuple[Tensor, Tensor]:
    """Constant-velocity prediction of each keypoint over dt.

    x (N, K, 2) pixels, v (N, K, 2) pixels per second, p (N, K, 3) the covariance per axis
    (var x, cov x v, var v; x and y share it), scale (N,) the person's size in pixels, dt (N,)
    seconds, accel (K,) `KalmanConfig.accel`. Returns the predicted x (N, K, 2) and covariance
    (N, K, 3): P = F P F^T + Q(dt), Q for white-noise acceleration.
    """
    dt = dt[:, None]
    q = accel.square() * (scale * scale)[:, None]  # pixels^2 / s^3
    pxx, pxv, pvv = p.unbind(-1)
    pxx = pxx + 2 * dt * pxv + dt * dt * pvv + q * dt**3 / 3
    pxv = pxv + dt * pvv + q * dt**2 / 2
    pvv = pvv + q * dt
    return x + v * dt[..., None], torch.stack([pxx, pxv, pvv], -1)


def measurement_variance(score: Tensor, scale: Tensor, config: KalmanConfig) -> Tensor:
    """Variance per axis (N, K) in pixels^2 of estimates scored score (N, K), people of size
    scale (N,) pixels."""
    std = config.noise * scale[:, None] * (1 - score).clamp(min=config.min_miss)
    return std * std


def unswap(
    z: Tensor,
    score: Tensor,
    xp: Tensor,
    var: Tensor,
    flip: Tensor,
    groups: Tensor,
    allowed: Tensor,
    config: KalmanConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Undo left/right swaps of whole limbs against the tracks' predictions.

    z (N, K, 2) estimates with scores (N, K); xp (N, K, 2) their predictions with innovation
    variance var (N, K); flip (K,) int64 maps each keypoint to its mirror; groups (K, G) bool,
    the keypoints of each limb pair (e.g. both arms); allowed (N, G) bool, where a swap may be
    undone. A pose network mixes up crossing legs and arms, and it mixes up the whole limb; when
    the limbs' estimates, mirrored, fit the prediction better by `swap_ratio` (normalised
    innovation summed over the group) and the unmirrored ones are surprising (above gate^2 per
    keypoint on average), the group's estimates and scores are exchanged with their mirrors.
    Returns z, score and swap (N, G) bool, the groups exchanged.
    """
    g = groups.to(z.dtype)
    count = g.sum(0)  # (G,)

    def cost(points: Tensor) -> Tensor:  # (N, G)
        return ((points - xp).square().sum(-1) / var) @ g

    kept, swapped = cost(z), cost(z[:, flip])
    swap = allowed & (kept > config.gate**2 * count) & (swapped < config.swap_ratio * kept)
    per_keypoint = (swap.to(z.dtype) @ g.T) > 0  # (N, K)
    z = torch.where(per_keypoint[..., None], z[:, flip], z)
    return z, torch.where(per_keypoint, score[:, flip], score), swap


def kalman_update(
    xp: Tensor, v: Tensor, p: Tensor, z: Tensor, score: Tensor, r: Tensor, config: KalmanConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse the estimate z (N, K, 2), scored score (N, K), of variance r (N, K) into the
    prediction xp, v, p (as `kalman_predict` returns them). Returns the new (x, v, p).

    The fused position is the Eq. (20) mean of prediction and estimate weighted by their inverse
    variances, xp + g (z - xp) with the gain g = P / (P + R).
    """
    pxx, pxv, pvv = p.unbind(-1)
    innovation = z - xp
    # A surprising estimate (more than `gate` sigmas off) means one of the two is wrong. A
    # confident one says the joint moved in a way the model did not foresee: the prediction's
    # variance widens until the estimate is `gate` sigmas away (a shorter memory for that joint).
    # A doubtful one is more likely a misplaced joint: its own variance widens instead.
    total = innovation.square().sum(-1) / (2 * config.gate**2)  # per axis, vs gate^2 (P + R)
    trusted = score >= config.trust_score
    widen_p = ((total - r) / pxx.clamp(min=1e-12)).clamp(min=1)
    widen_r = ((total - pxx) / r.clamp(min=1e-12)).clamp(min=1)
    widen_p = torch.where(trusted, widen_p, 1.0)
    r = torch.where(trusted, r, r * widen_r)
    pxx, pxv, pvv = pxx * widen_p, pxv * widen_p, pvv * widen_p
    gain_x = pxx / (pxx + r)
    gain_v = pxv / (pxx + r)
    x = xp + gain_x[..., None] * innovation
    v = v + gain_v[..., None] * innovation
    p = torch.stack([(1 - gain_x) * pxx, (1 - gain_x) * pxv, pvv - gain_v * pxv], -1)
    return x, v, p
