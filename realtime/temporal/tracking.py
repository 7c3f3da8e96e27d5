"""Association for the temporal stage: the track table, and each frame's detections matched to
tracks.

Each track keeps its last `window` raw estimates (image pixels, with their keypoint scores and
ages in seconds) and a per-keypoint velocity. A track is predicted forward to the new frame by
constant velocity, scored against every detection by OKS (`ccm.nms.oks`, with the detection's
box area and its confident keypoints as ground truth), and matched greedily, best pair first.
An unmatched detection starts a track with a fresh, increasing id; a track ends after
`max_missed` frames in a row without a match. Tracks live in a fixed table of slots, so the
number of tracks is never a host-side shape. Every step is a batched torch op with no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ccm.nms import oks


@dataclass
class Tracks:
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
    ) -> Tracks:
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


@dataclass
class TrackWindow:
    """One frame's detections with their tracks' history in front: the current estimate first.

    xy (N, W, K, 2) raw estimates in image pixels, score (N, W, K), age (N, W) seconds before
    this frame, valid (N, W) bool. Row n belongs to detection n (no history when it has no slot).
    """

    xy: Tensor
    score: Tensor
    age: Tensor
    valid: Tensor


def confident(scores: Tensor, threshold: float) -> Tensor:
    """(..., K) scores -> (..., K) bool; a pose with no confident keypoint counts all of them."""
    mask = scores >= threshold
    return mask | ~mask.any(-1, keepdim=True)


def associate(
    s: Tracks, kpts: Tensor, areas: Tensor, score_threshold: float, match_min_oks: float
) -> tuple[Tensor, Tensor]:
    """Match detections to tracks (OKS above `match_min_oks`, best pair first) and open tracks
    for the rest.

    kpts (N, K, 3) and areas (N,) in image pixels. Returns slot (N,) int64, each detection's
    slot or -1 when the table is full, and started (C,) bool, the slots opened in this frame.
    """
    n, c = kpts.shape[0], s.active.shape[0]
    device = kpts.device
    predicted = s.anchor + s.velocity * s.since[:, None, None]  # constant velocity
    # The detection is the ground truth of the OKS: its area, its confident keypoints.
    truth = torch.cat([kpts[..., :2], confident(kpts[..., 2], score_threshold)[..., None]], -1)
    tracks = torch.cat([predicted, torch.zeros_like(predicted[..., :1])], -1)
    sim = oks(tracks, truth, areas, s.sigmas).T  # (N, C)
    sim = torch.where(s.active[None] & (sim >= match_min_oks), sim, -1.0)

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
    started = scatter(opens, opened, torch.zeros_like(s.active))
    s.ids = scatter(s.next_id + rank, opened, s.ids)
    s.next_id = s.next_id + opens.sum()
    s.active = s.active | started
    s.valid = s.valid & ~started[:, None]
    return slot, started


def track_window(s: Tracks, slot: Tensor, kpts: Tensor) -> TrackWindow:
    """Each detection's estimate in front of its track's newest W - 1 (the oldest drops)."""
    n = kpts.shape[0]
    idx = slot.clamp(min=0)
    has_track = (slot >= 0)[:, None]
    ones = torch.ones((n, 1), dtype=torch.bool, device=kpts.device)
    return TrackWindow(
        xy=torch.cat([kpts[:, None, :, :2], s.xy[idx, :-1]], 1),
        score=torch.cat([kpts[:, None, :, 2], s.score[idx, :-1]], 1),
        age=torch.cat([torch.zeros_like(s.age[idx, :1]), s.age[idx, :-1]], 1),
        valid=torch.cat([ones, s.valid[idx, :-1] & has_track], 1),
    )


def update_tracks(
    s: Tracks, slot: Tensor, win: TrackWindow, fused: Tensor, velocity: Tensor, max_missed: int
) -> None:
    """Store the matched tracks' new windows and motion; end tracks missed too long."""
    observed = scatter(torch.ones_like(slot, dtype=torch.bool), slot, torch.zeros_like(s.active))
    s.xy = scatter(win.xy, slot, s.xy)
    s.score = scatter(win.score, slot, s.score)
    s.age = scatter(win.age, slot, s.age)
    s.valid = scatter(win.valid, slot, s.valid)
    # The prediction for the next frame starts from the fused pose whatever the output method,
    # so every method tracks the same way.
    s.anchor = scatter(fused, slot, s.anchor)
    s.velocity = scatter(velocity, slot, s.velocity)
    s.since = torch.where(observed, 0.0, s.since)
    s.missed = torch.where(observed, 0, s.missed + 1)
    ended = s.active & (s.missed > max_missed)
    s.active = s.active & ~ended
    s.ids = torch.where(ended, -1, s.ids)


def scatter(values: Tensor, slot: Tensor, into: Tensor) -> Tensor:
    """A copy of into (C, ...) with into[slot[n]] = values[n] (N, ...) wherever slot[n] >= 0."""
    c = into.shape[0]
    target = torch.where(slot >= 0, slot, c)  # -1 writes a spare row that is then dropped
    padded = torch.cat([into, into[:1]], 0)
    return padded.index_copy(0, target, values.to(into.dtype))[:c]
