"""The temporal stage: stable track ids and temporal fusion of each track's poses.

`TemporalFusion` (a `realtime.temporal.TemporalStage`) is called once per frame of a stream,
after the pose stage and the pipeline's one device->host copy, with that frame's `FramePoses`
(boxes, scores, keypoints in image pixels, N may be 0) and returns the same people in the same
order with `track_ids` filled in and the keypoint x, y smoothed over time. Every step is a
batched torch op over all tracks and people, with no Python loop over either, so it runs on
whatever device the poses are on.

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

Association lives in `realtime.temporal.tracking`, the fusion methods in
`realtime.temporal.smoothing`; this module holds the stage's config and `TemporalFusion`,
which runs them once per frame.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ccm.geometry import boxes_from_keypoints
from ccm.poses import FramePoses
from ccm.skeleton import COCO_FLIP_PAIRS, COCO_SIGMAS, flip_permutation
from realtime.temporal.kalman import COCO_LIMB_PAIRS, KalmanConfig
from realtime.temporal.smoothing import (
    OneEuroConfig,
    kalman_fuse,
    one_euro_filter,
    soft_nms_fuse,
    within_reach,
)
from realtime.temporal.stage import TemporalStage
from realtime.temporal.tracking import Tracks, associate, track_window, update_tracks

log = logging.getLogger(__name__)

METHODS = ("kalman", "softnms", "oneeuro", "none")


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


def _box_areas(boxes: Tensor) -> Tensor:
    """(N, 4) x1, y1, x2, y2 -> (N,) areas in pixels squared."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


class TemporalFusion(TemporalStage):
    """One stream's temporal state: `poses = fusion(poses)` once per frame, `reset()` per video."""

    def __init__(self, config: TemporalConfig = TemporalConfig()) -> None:
        self.config = config
        self._tracks: Tracks | None = None
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

    @property
    def method(self) -> str:
        return self.config.method

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
            self._tracks = Tracks.empty(cfg.max_tracks, cfg.window, *self._constants[kpts.device])
        s = self._tracks
        s.since = s.since + dt
        s.age = s.age + dt
        self._pts = float(poses.pts)

        cfg = self.config
        slot, started = associate(s, kpts, areas, cfg.score_threshold, cfg.match_min_oks)
        window = track_window(s, slot, kpts)
        fused, velocity = soft_nms_fuse(
            window, kpts, areas, s.sigmas, cfg.score_threshold, cfg.fusion_min_oks, cfg.half_life_s
        )
        scores = kpts[..., 2:]
        if self.config.method == "softnms":
            out = fused
        elif self.config.method == "kalman":
            out, kalman_scores = kalman_fuse(s, slot, started, kpts, areas, self.config.kalman)
            scores = kalman_scores[..., None]
        elif self.config.method == "oneeuro":
            out = one_euro_filter(s, slot, started, kpts[..., :2], self.config.one_euro)
        else:
            out = kpts[..., :2]
        update_tracks(s, slot, window, fused, velocity, self.config.max_missed)
        out = within_reach(out, poses.boxes.to(out.device, out.dtype))

        track_ids = torch.where(slot >= 0, s.ids[slot.clamp(min=0)], -1)
        keypoints = torch.cat([out, scores], -1).to(poses.keypoints.dtype)
        self._last = (slot, keypoints)
        return FramePoses(poses.frame, poses.pts, poses.boxes, poses.scores, keypoints, track_ids)

    @torch.inference_mode()
    def predicted_boxes(
        self,
        pts: float,
        score_thr: float = 0.3,
        image_size: tuple[int, int] | None = None,
        padding: float = 1.25,
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


def _group_matrix(keypoints: int, groups: tuple[tuple[int, ...], ...]) -> Tensor:
    """(K, G) bool: keypoint k belongs to group g."""
    matrix = torch.zeros((keypoints, len(groups)), dtype=torch.bool)
    for g, members in enumerate(groups):
        matrix[list(members), g] = True
    return matrix
