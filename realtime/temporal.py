"""The temporal stage: stable track ids and temporal fusion of each track's poses.

`TemporalFusion` is called once per frame, right after the pose network, with that frame's
`FramePoses` (boxes, scores, keypoints in image pixels, torch tensors on the pipeline's device,
N may be 0) and returns the same people in the same order with `track_ids` filled in and the
keypoint x, y smoothed over time. Every step is a batched torch op on the frame's device with no
device->host sync, so the pipeline's one copy after this stage is the frame's only one.

Tracking. Each track keeps its last `window` raw estimates (image pixels, with their keypoint
scores and ages in seconds) and a per-keypoint velocity: the least-squares slope of those
estimates over time. A track is predicted forward to the new frame by constant velocity, scored
against every detection by OKS (`ccm.nms.oks`, with the detection's box area and its confident
keypoints as ground truth), and matched greedily, best pair first, above `match_min_oks`. An
unmatched detection starts a track with a fresh, increasing id; a track ends after `max_missed`
frames in a row without a match. Tracks live in a fixed table of `max_tracks` slots, so the
number of tracks is never a host-side shape; a person beyond that capacity gets id -1 and its raw
pose.

Temporal Soft-NMS fusion ("softnms"). The CCM paper fuses the duplicate poses of one person in one
frame (Eq. (20)-(21)); here the duplicates are one track's estimates over the last frames. Each
old estimate p_j is first moved to the current time, p_j + v (t - t_j), so that a moving person is
not dragged back (for motion at constant velocity the fused pose has no lag at all). Then, as in
Eq. (20), p* = sum_j w_j p_j / sum_j w_j with w = 1 for the current pose and w_j = OKS(p_j, p) for
the old ones, times 0.5 ** (age / half_life_s) when a half-life is set; an old estimate whose OKS
is below `fusion_min_oks` is not in the set Lambda, and an old keypoint whose score is below
`score_threshold` gets weight 0, so it pulls nothing. With equal weights the fused pose is the
least-squares line through the window evaluated now.

Kalman fusion ("kalman", the default; see docs/temporal.md). Each keypoint of each track has a
constant-velocity Kalman filter (`KalmanConfig`). Its prediction and the current estimate are
fused as in Eq. (20), weighted by their inverse variances: the estimate's from its heatmap score
(a low score, a wide error), the prediction's from the track's history and how fast that joint
may accelerate (a hip rides on the body's steady walk, a wrist swings). How well the two agree
sets the memory per joint: an estimate far from its prediction shortens the memory when it is
confident, and counts for less when it is not. A limb pair whose estimates fit the prediction
far better mirrored (a pose network mixes up crossing legs) is mirrored back first; those
keypoints' scores move with them. Where the old fusion draws a straight line through 0.4 s of
estimates, which cuts the corners of a swinging limb, the filter keeps a long memory only for
the joints that move steadily, so it lowers error as well as jitter.

"oneeuro" runs a 1-euro filter (Casiez et al., CHI 2012) per keypoint on the same tracks instead;
"none" only tracks. Boxes and person scores pass through as the current frame has them, and,
except for the limbs "kalman" mirrors back, so do the keypoint scores: like
`ccm.nms.soft_nms_fusion`, fusion moves locations. Time is each frame's pts in seconds, so
variable frame rates work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ccm.geometry import boxes_from_keypoints
from ccm.nms import oks
from ccm.poses import FramePoses
from ccm.skeleton import COCO_FLIP_PAIRS, COCO_SIGMAS, flip_permutation
from realtime.kalman import (
    COCO_LIMB_PAIRS,
    KalmanConfig,
    kalman_predict,
    kalman_update,
    measurement_variance,
    unswap,
)

log = logging.getLogger(__name__)

METHODS = ("kalman", "softnms", "oneeuro", "none")


@dataclass(frozen=True)
class OneEuroConfig:
    """1-euro filter parameters: cutoffs in Hz, `beta` in Hz per (pixel / second) of speed."""

    min_cutoff: float = 1.0
    beta: float = 0.05
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if not (self.min_cutoff > 0 and self.d_cutoff > 0 and self.beta >= 0):
            raise ValueError(f"need min_cutoff > 0, d_cutoff > 0 and beta >= 0; got {self}")


@dataclass(frozen=True)
class TemporalConfig:
    """How the temporal stage tracks and smooths.

    method: "kalman" (per-keypoint Kalman fusion), "softnms" (temporal Soft-NMS fusion),
        "oneeuro" (1-euro filter) or "none".
    window: estimates fused per track, the current one included (1 = no fusion).
    half_life_s: an old estimate's weight halves every this many seconds; None = no decay.
    fusion_min_oks: old estimates with a lower OKS to the current pose are left out.
    score_threshold: old keypoints scored below it pull no fusion and shape no velocity; the
        current pose's ones are left out of its OKS (unless it has no keypoint above it).
    match_min_oks: the least OKS at which a detection continues a track.
    max_missed: frames in a row a track may go unmatched before it ends.
    one_euro, kalman: the parameters of those methods.
    flip_pairs: left/right keypoint pairs; swap_groups: limbs whose left/right swap "kalman"
        undoes as a whole (COCO: both arms, both legs).
    max_tracks: capacity of the track table.
    """

    method: str = "kalman"
    window: int = 6
    half_life_s: float | None = None
    fusion_min_oks: float = 0.5
    score_threshold: float = 0.3
    match_min_oks: float = 0.3
    max_missed: int = 10
    max_tracks: int = 64
    one_euro: OneEuroConfig = field(default_factory=OneEuroConfig)
    kalman: KalmanConfig = field(default_factory=KalmanConfig)
    sigmas: tuple[float, ...] = COCO_SIGMAS
    flip_pairs: tuple[tuple[int, int], ...] = COCO_FLIP_PAIRS
    swap_groups: tuple[tuple[int, ...], ...] = COCO_LIMB_PAIRS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if self.window < 1 or self.max_missed < 0 or self.max_tracks < 1:
            raise ValueError(
                f"need window >= 1, max_missed >= 0, max_tracks >= 1; got window={self.window}, "
                f"max_missed={self.max_missed}, max_tracks={self.max_tracks}"
            )
        if self.half_life_s is not None and not self.half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0 or None; got {self.half_life_s}")
        for name in ("fusion_min_oks", "score_threshold", "match_min_oks"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
        if len(self.sigmas) < 1:
            raise ValueError("sigmas must hold one OKS constant per keypoint")
        if len(self.kalman.accel) != len(self.sigmas):
            raise ValueError(
                f"kalman.accel needs one value per keypoint ({len(self.sigmas)}); got "
                f"{len(self.kalman.accel)}"
            )
        pairs = (*self.flip_pairs, *self.swap_groups)
        if any(not 0 <= i < len(self.sigmas) for pair in pairs for i in pair):
            raise ValueError(
                f"flip_pairs and swap_groups must index the {len(self.sigmas)} keypoints; got "
                f"{self.flip_pairs}, {self.swap_groups}"
            )


@dataclass
class _Tracks:
    """The track table; C = max_tracks slots, W = window, K keypoints, float32 image pixels.

    A free slot has active False and id -1. History index 0 is the newest estimate.
    """

    active: Tensor  # (C,) bool
    ids: Tensor  # (C,) int64
    missed: Tensor  # (C,) int64, frames since the last match
    since: Tensor  # (C,) seconds since the last match
    xy: Tensor  # (C, W, K, 2) raw estimates
    score: Tensor  # (C, W, K) their keypoint scores
    age: Tensor  # (C, W) seconds before the newest frame
    valid: Tensor  # (C, W) bool, the entry holds an estimate
    anchor: Tensor  # (C, K, 2) fused pose at the last match, the base of the prediction
    velocity: Tensor  # (C, K, 2) pixels per second
    euro_x: Tensor  # (C, K, 2) 1-euro filtered position
    euro_dx: Tensor  # (C, K, 2) 1-euro filtered velocity, pixels per second
    kf_x: Tensor  # (C, K, 2) Kalman position, pixels
    kf_v: Tensor  # (C, K, 2) Kalman velocity, pixels per second
    kf_p: Tensor  # (C, K, 3) Kalman covariance per axis: var(x), cov(x, v), var(v)
    next_id: Tensor  # () int64
    sigmas: Tensor  # (K,) OKS constants, on the device so that `oks` copies nothing per frame
    flip: Tensor  # (K,) int64, each keypoint's left/right mirror
    accel: Tensor  # (K,) KalmanConfig.accel
    groups: Tensor  # (K, G) bool, TemporalConfig.swap_groups

    @classmethod
    def empty(
        cls, slots: int, window: int, sigmas: Tensor, flip: Tensor, accel: Tensor, groups: Tensor
    ) -> _Tracks:
        """An empty table on sigmas' device; the (K,) constants are kept, not copied."""
        keypoints, device = sigmas.shape[0], sigmas.device

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(
            active=zeros(slots, dtype=torch.bool),
            ids=torch.full((slots,), -1, dtype=torch.long, device=device),
            missed=zeros(slots, dtype=torch.long),
            since=zeros(slots),
            xy=zeros(slots, window, keypoints, 2),
            score=zeros(slots, window, keypoints),
            age=zeros(slots, window),
            valid=zeros(slots, window, dtype=torch.bool),
            anchor=zeros(slots, keypoints, 2),
            velocity=zeros(slots, keypoints, 2),
            euro_x=zeros(slots, keypoints, 2),
            euro_dx=zeros(slots, keypoints, 2),
            kf_x=zeros(slots, keypoints, 2),
            kf_v=zeros(slots, keypoints, 2),
            kf_p=zeros(slots, keypoints, 3),
            next_id=zeros(dtype=torch.long),
            sigmas=sigmas,
            flip=flip,
            accel=accel,
            groups=groups,
        )


def _confident(scores: Tensor, threshold: float) -> Tensor:
    """(..., K) scores -> (..., K) bool; a pose with no confident keypoint counts all of them."""
    mask = scores >= threshold
    return mask | ~mask.any(-1, keepdim=True)


def _box_areas(boxes: Tensor) -> Tensor:
    """(N, 4) x1, y1, x2, y2 -> (N,) areas in pixels squared."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


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


@dataclass
class _Window:
    """One frame's detections with their tracks' history in front: the current estimate first.

    xy (N, W, K, 2) raw estimates in image pixels, score (N, W, K), age (N, W) seconds before
    this frame, valid (N, W) bool. Row n belongs to detection n (no history when it has no slot).
    """

    xy: Tensor
    score: Tensor
    age: Tensor
    valid: Tensor


class TemporalFusion:
    """Per-pipeline temporal state: `poses = fusion(poses)` once per frame, `reset()` per video."""

    def __init__(self, config: TemporalConfig = TemporalConfig()) -> None:
        self.config = config
        self._tracks: _Tracks | None = None
        self._pts: float | None = None
        self._last: tuple[Tensor, Tensor] | None = None  # the last frame's slots and keypoints
        # Built once; moved to a device once, at its first frame, never again after a reset.
        k = len(config.sigmas)
        self._constants = {
            torch.device("cpu"): (
                torch.tensor(config.sigmas, dtype=torch.float32),
                torch.tensor(flip_permutation(k, config.flip_pairs), dtype=torch.long),
                torch.tensor(config.kalman.accel, dtype=torch.float32),
                _group_matrix(k, config.swap_groups),
            )
        }

    def reset(self) -> None:
        """Forget every track; the next id is 0 again."""
        self._tracks = None
        self._pts = None
        self._last: tuple[Tensor, Tensor] | None = None

    @torch.inference_mode()
    def __call__(self, poses: FramePoses) -> FramePoses:
        """Track and smooth one frame; returns `poses` with track ids and fused keypoints.

        Rows keep their order; boxes, person scores and keypoint scores are returned unchanged.
        """
        kpts, areas = self._checked(poses)
        dt = 0.0 if self._pts is None else float(poses.pts) - self._pts
        if self._tracks is None:
            cfg = self.config
            if kpts.device not in self._constants:
                cpu = self._constants[torch.device("cpu")]
                self._constants[kpts.device] = tuple(t.to(kpts.device) for t in cpu)
            self._tracks = _Tracks.empty(cfg.max_tracks, cfg.window, *self._constants[kpts.device])
        s = self._tracks
        s.since = s.since + dt
        s.age = s.age + dt
        self._pts = float(poses.pts)

        slot, started = self._associate(s, kpts, areas)
        window = self._window(s, slot, kpts)
        fused, velocity = self._fuse(window, kpts, areas, s.sigmas)
        scores = kpts[..., 2:]
        if self.config.method == "softnms":
            out = fused
        elif self.config.method == "kalman":
            out, kalman_scores = self._kalman(s, slot, started, kpts, areas)
            scores = kalman_scores[..., None]
        elif self.config.method == "oneeuro":
            out = self._one_euro(s, slot, started, kpts[..., :2])
        else:
            out = kpts[..., :2]
        self._update(s, slot, window, fused, velocity)
        out = _within_reach(out, poses.boxes.to(out.device, out.dtype))

        track_ids = torch.where(slot >= 0, s.ids[slot.clamp(min=0)], -1)
        keypoints = torch.cat([out, scores], -1).to(poses.keypoints.dtype)
        self._last = (slot, keypoints)
        return FramePoses(poses.frame, poses.pts, poses.boxes, poses.scores, keypoints, track_ids)

    @torch.inference_mode()
    def predicted_boxes(
        self,
        pts: float,
        score_thr: float = 0.3,
        padding: float = 1.25,
        image_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Boxes for a frame at `pts` seconds without detection (`--det-every`), from the tracks.

        One box per person of the last frame this stage returned, in its row order: around that
        person's returned keypoints, moved to `pts` by their track's mean keypoint velocity (the
        body's motion: swinging limbs, extrapolated one by one, would overshoot; a person
        without a track stays where it was), as `ccm.geometry.boxes_from_keypoints`
        makes them from poses with these arguments. Returns (N, 4) x1, y1, x2, y2 in image
        pixels on the frames' device; (0, 4) before the first frame. No host sync.
        """
        if self._last is None or self._tracks is None or self._pts is None:
            return torch.zeros((0, 4))
        slot, keypoints = self._last
        s, dt = self._tracks, float(pts) - self._pts
        idx = slot.clamp(min=0)
        velocity = s.kf_v[idx] if self.config.method == "kalman" else s.velocity[idx]
        step = velocity.mean(1, keepdim=True) * dt * (slot >= 0)[:, None, None]
        ahead = torch.cat([keypoints[..., :2].float() + step, keypoints[..., 2:].float()], -1)
        return boxes_from_keypoints(ahead, score_thr, padding, image_size)

    def _checked(self, poses: FramePoses) -> tuple[Tensor, Tensor]:
        """Validate one frame; returns keypoints (N, K, 3) float32 and box areas (N,) pixels^2."""
        if not isinstance(poses, FramePoses):
            raise ValueError(f"expected FramePoses, got {type(poses).__name__}")
        if not (isinstance(poses.keypoints, Tensor) and isinstance(poses.boxes, Tensor)):
            raise ValueError("the temporal stage takes torch tensors; call FramePoses.to(device)")
        k = len(self.config.sigmas)
        if poses.num_keypoints != k:
            raise ValueError(
                f"frame {poses.frame}: {poses.num_keypoints} keypoints per person, but the OKS "
                f"sigmas are for {k}"
            )
        pts = float(poses.pts)
        if not math.isfinite(pts):
            raise ValueError(f"frame {poses.frame}: pts must be finite; got {poses.pts}")
        if self._pts is not None and pts <= self._pts:
            raise ValueError(
                f"frame {poses.frame}: pts {pts} s does not follow the previous frame's "
                f"{self._pts} s; call reset() when a new video starts or the source seeks"
            )
        device = poses.keypoints.device
        if self._tracks is not None and self._tracks.ids.device != device:
            raise ValueError(
                f"frame {poses.frame} is on {device} but the tracks are on "
                f"{self._tracks.ids.device}; call reset() to move the stage"
            )
        if len(poses) > self.config.max_tracks:
            log.warning(
                "frame %d: %d people but max_tracks=%d; the rest get track id -1",
                poses.frame,
                len(poses),
                self.config.max_tracks,
            )
        return poses.keypoints.float(), _box_areas(poses.boxes.to(device, torch.float32))

    def _associate(self, s: _Tracks, kpts: Tensor, areas: Tensor) -> tuple[Tensor, Tensor]:
        """Match detections to tracks and open tracks for the rest.

        kpts (N, K, 3) and areas (N,) in image pixels. Returns slot (N,) int64, each detection's
        slot or -1 when the table is full, and started (C,) bool, the slots opened in this frame.
        """
        cfg = self.config
        n, c = kpts.shape[0], cfg.max_tracks
        device = kpts.device
        predicted = s.anchor + s.velocity * s.since[:, None, None]  # constant velocity
        # The detection is the ground truth of the OKS: its area, its confident keypoints.
        truth = torch.cat(
            [kpts[..., :2], _confident(kpts[..., 2], cfg.score_threshold)[..., None]], -1
        )
        tracks = torch.cat([predicted, torch.zeros_like(predicted[..., :1])], -1)
        sim = oks(tracks, truth, areas, s.sigmas).T  # (N, C)
        sim = torch.where(s.active[None] & (sim >= cfg.match_min_oks), sim, -1.0)

        # Greedy, best pair first, in a fixed number of device steps with no host sync.
        rows = torch.arange(n, device=device)
        cols = torch.arange(c, device=device)
        slot = torch.full((n,), -1, dtype=torch.long, device=device)
        for _ in range(min(n, c)):
            value, best = sim.flatten().max(0)
            i, j = best // c, best % c
            hit = value >= 0
            slot = torch.where(hit & (rows == i), j, slot)
            sim = torch.where(hit & ((rows[:, None] == i) | (cols[None] == j)), -1.0, sim)

        # Unmatched detections take the free slots in index order, and fresh ids in row order.
        new = slot < 0
        rank = torch.cumsum(new.long(), 0) - 1
        free_first = torch.argsort(s.active.to(torch.uint8), stable=True)
        opens = new & (rank < (~s.active).sum())
        slot = torch.where(opens, free_first[rank.clamp(0, c - 1)], slot)
        opened = torch.where(opens, slot, -1)
        started = _scatter(opens, opened, torch.zeros_like(s.active))
        s.ids = _scatter(s.next_id + rank, opened, s.ids)
        s.next_id = s.next_id + opens.sum()
        s.active = s.active | started
        s.valid = s.valid & ~started[:, None]
        return slot, started

    def _window(self, s: _Tracks, slot: Tensor, kpts: Tensor) -> _Window:
        """Each detection's estimate in front of its track's newest W - 1 (the oldest drops)."""
        n = kpts.shape[0]
        idx = slot.clamp(min=0)
        has_track = (slot >= 0)[:, None]
        ones = torch.ones((n, 1), dtype=torch.bool, device=kpts.device)
        return _Window(
            xy=torch.cat([kpts[:, None, :, :2], s.xy[idx, :-1]], 1),
            score=torch.cat([kpts[:, None, :, 2], s.score[idx, :-1]], 1),
            age=torch.cat([torch.zeros_like(s.age[idx, :1]), s.age[idx, :-1]], 1),
            valid=torch.cat([ones, s.valid[idx, :-1] & has_track], 1),
        )

    def _fuse(
        self, win: _Window, kpts: Tensor, areas: Tensor, sigmas: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Temporal Soft-NMS fusion, Eq. (20) across frames.

        kpts (N, K, 3), areas (N,) in image pixels; sigmas (K,). Returns the fused x, y
        (N, K, 2) and the window's velocity (N, K, 2) in pixels per second.
        """
        cfg = self.config
        usable = win.valid[..., None] & (win.score >= cfg.score_threshold)  # (N, W, K)
        velocity = window_velocity(win.xy, win.age, usable)
        # Motion compensation: every estimate moved to the current time.
        moved = win.xy + velocity[:, None] * win.age[..., None, None]
        truth = torch.cat(
            [kpts[..., :2], _confident(kpts[..., 2], cfg.score_threshold)[..., None]], -1
        )
        similarity = paired_oks(torch.cat([moved, win.score[..., None]], -1), truth, areas, sigmas)
        # Lambda: the old estimates similar enough to the current pose; OKS-IOU as the weight.
        weight = torch.where(win.valid & (similarity >= cfg.fusion_min_oks), similarity, 0.0)
        if cfg.half_life_s is not None:
            weight = weight * torch.exp2(-win.age / cfg.half_life_s)
        weight = weight[..., None] * usable  # (N, W, K): low-scored old keypoints pull nothing
        weight = torch.cat([torch.ones_like(weight[:, :1]), weight[:, 1:]], 1)  # OKS_ii = 1
        fused = (weight[..., None] * moved).sum(1) / weight.sum(1)[..., None]  # Eq. (20)
        return fused, velocity

    def _one_euro(self, s: _Tracks, slot: Tensor, started: Tensor, xy: Tensor) -> Tensor:
        """1-euro filter the detections' x, y (N, K, 2) on their tracks; a new track starts raw."""
        idx = slot.clamp(min=0)
        fresh = ((slot < 0) | started[idx])[:, None, None]
        x, dx = one_euro_step(
            xy, s.euro_x[idx], s.euro_dx[idx], s.since[idx].clamp(min=1e-6), self.config.one_euro
        )
        x = torch.where(fresh, xy, x)
        dx = torch.where(fresh, 0.0, dx)
        s.euro_x = _scatter(x, slot, s.euro_x)
        s.euro_dx = _scatter(dx, slot, s.euro_dx)
        return x

    def _kalman(
        self, s: _Tracks, slot: Tensor, started: Tensor, kpts: Tensor, areas: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Kalman-fuse the detections' keypoints (N, K, 3) on their tracks; returns x, y (N, K, 2)
        and the keypoint scores (N, K), which move with the limbs mirrored back.

        A new track starts at its estimate, at rest, with the estimate's variance and a wide
        speed uncertainty; a detection without a track passes through raw.
        """
        cfg = self.config.kalman
        idx = slot.clamp(min=0)
        z, score = kpts[..., :2], kpts[..., 2]
        scale = areas.clamp(min=1.0).sqrt()
        dt = s.since[idx].clamp(min=1e-6)
        xp, p = kalman_predict(s.kf_x[idx], s.kf_v[idx], s.kf_p[idx], scale, dt, s.accel)
        fresh = (slot < 0) | started[idx]  # (N,)
        if cfg.swap_ratio > 0:
            var = p[..., 0] + measurement_variance(score, scale, cfg)
            allowed = ~fresh[:, None].expand(-1, s.groups.shape[1])
            z, score, _ = unswap(z, score, xp, var, s.flip, s.groups, allowed, cfg)
        r = measurement_variance(score, scale, cfg)
        x, v, p = kalman_update(xp, s.kf_v[idx], p, z, score, r, cfg)
        start_p = torch.stack(
            [r, torch.zeros_like(r), (cfg.start_speed * scale)[:, None].square().expand_as(r)], -1
        )
        x = torch.where(fresh[:, None, None], z, x)
        v = torch.where(fresh[:, None, None], 0.0, v)
        p = torch.where(fresh[:, None, None], start_p, p)
        s.kf_x = _scatter(x, slot, s.kf_x)
        s.kf_v = _scatter(v, slot, s.kf_v)
        s.kf_p = _scatter(p, slot, s.kf_p)
        return x, score

    def _update(
        self, s: _Tracks, slot: Tensor, win: _Window, fused: Tensor, velocity: Tensor
    ) -> None:
        """Store the matched tracks' new windows and motion; end tracks missed too long."""
        observed = _scatter(
            torch.ones_like(slot, dtype=torch.bool), slot, torch.zeros_like(s.active)
        )
        s.xy = _scatter(win.xy, slot, s.xy)
        s.score = _scatter(win.score, slot, s.score)
        s.age = _scatter(win.age, slot, s.age)
        s.valid = _scatter(win.valid, slot, s.valid)
        # The prediction for the next frame starts from the fused pose whatever the output method,
        # so every method tracks the same way.
        s.anchor = _scatter(fused, slot, s.anchor)
        s.velocity = _scatter(velocity, slot, s.velocity)
        s.since = torch.where(observed, 0.0, s.since)
        s.missed = torch.where(observed, 0, s.missed + 1)
        ended = s.active & (s.missed > self.config.max_missed)
        s.active = s.active & ~ended
        s.ids = torch.where(ended, -1, s.ids)


def _group_matrix(keypoints: int, groups: tuple[tuple[int, ...], ...]) -> Tensor:
    """(K, G) bool: keypoint k belongs to group g."""
    matrix = torch.zeros((keypoints, len(groups)), dtype=torch.bool)
    for g, members in enumerate(groups):
        matrix[list(members), g] = True
    return matrix


def _within_reach(xy: Tensor, boxes: Tensor) -> Tensor:
    """Fused x, y (N, K, 2) kept within one box size of the person's current box (N, 4): fusion
    moves a joint by its motion between frames, and a prediction that overshoots further (a track
    of wild estimates) is not where the network looked."""
    size = boxes[:, 2:] - boxes[:, :2]
    lo, hi = boxes[:, None, :2] - size[:, None], boxes[:, None, 2:] + size[:, None]
    return torch.minimum(torch.maximum(xy, lo), hi)


def _scatter(values: Tensor, slot: Tensor, into: Tensor) -> Tensor:
    """A copy of into (C, ...) with into[slot[n]] = values[n] (N, ...) wherever slot[n] >= 0."""
    c = into.shape[0]
    target = torch.where(slot >= 0, slot, c)  # -1 writes a spare row that is then dropped
    padded = torch.cat([into, into[:1]], 0)
    return padded.index_copy(0, target, values.to(into.dtype))[:c]
