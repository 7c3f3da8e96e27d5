"""The temporal stage: ids through crossings and gaps, Kalman fusion, Eq. (20) across frames,
1-euro reference, and jitter / lag / error on walking and swinging figures with known ground truth.

The trajectories are the synthetic walkers of `train.synthetic` (the same straight-line walks with
a gait cycle that its videos are rendered from; walkers 0 and 1 cross mid-clip), projected to
COCO keypoints without rendering. Detections add Gaussian jitter, occasional large errors (half of
them with a low score, as a pose network gives them) and missed frames.

Metrics, over every person, keypoint and frame where the person was detected:
    jitter  mean |x[t+1] - 2 x[t] + x[t-1]| (pixels per frame^2), triples of detected frames only;
    lag     the time shift tau that best aligns output with truth to first order,
            x_out(t) ~ x_gt(t - tau) ~ x_gt(t) - tau v(t), so
            tau = -sum (x_out - x_gt).v / sum |v|^2 with v the true velocity;
            positive when the output trails the motion;
    error   mean |x_out - x_gt| in pixels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ccm.geometry import boxes_from_keypoints
from ccm.nms import oks
from ccm.poses import FramePoses
from realtime.temporal.fusion import TemporalConfig, TemporalFusion
from realtime.temporal.kalman import KalmanConfig
from realtime.temporal.smoothing import OneEuroConfig
from train.synthetic.figures import project_figure
from train.synthetic.scenes import Split, image_rng
from train.synthetic.videos import VideoConfig, sample_tracks

K = 17
FPS = 25


pytestmark = pytest.mark.usefixtures("one_thread")


def _walkers(num_people: int, seconds: float, seed: int = 0, motion: str = "walk") -> np.ndarray:
    """Ground truth (F, P, K, 2) in image pixels of `train.synthetic`'s figures at FPS."""
    cfg = VideoConfig(num_people=num_people, seconds=seconds, fps=FPS, motion=motion)
    tracks = sample_tracks(image_rng(seed, Split.VIDEO, 0), cfg)
    return np.stack(
        [[project_figure(t.at(f)).xyd[:K, :2] for t in tracks] for f in range(cfg.num_frames)]
    )


@dataclass
class _Detections:
    xy: np.ndarray  # (F, P, K, 2)
    score: np.ndarray  # (F, P, K)
    present: np.ndarray  # (F, P) bool


def _noisy(
    gt: np.ndarray,
    seed: int,
    sigma: float = 1.5,
    outlier_rate: float = 0.02,
    outlier_px: float = 12.0,
    miss_rate: float = 0.03,
) -> _Detections:
    rng = np.random.default_rng(seed)
    f, p, k, _ = gt.shape
    xy = gt + rng.normal(0, sigma, gt.shape)
    outlier = rng.random((f, p, k)) < outlier_rate
    angle = rng.uniform(0, 2 * np.pi, (f, p, k))
    xy += outlier[..., None] * outlier_px * np.stack([np.cos(angle), np.sin(angle)], -1)
    score = rng.uniform(0.7, 0.95, (f, p, k))
    score = np.where(outlier & (rng.random((f, p, k)) < 0.5), 0.1, score)
    return _Detections(xy, score, rng.random((f, p)) >= miss_rate)


def _frame(
    index: int, pts: float, xy: np.ndarray, score: np.ndarray, device: str = "cpu"
) -> FramePoses:
    """FramePoses of people xy (N, K, 2), score (N, K); boxes are the keypoint extent + 10 px."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, K, 2)
    keypoints = np.concatenate([xy, np.asarray(score).reshape(-1, K, 1)], -1)
    boxes = np.concatenate([xy.min(1) - 10, xy.max(1) + 10], -1)
    n = len(xy)
    return FramePoses(
        frame=index,
        pts=pts,
        boxes=torch.tensor(boxes, dtype=torch.float32, device=device),
        scores=torch.ones(n, device=device),
        keypoints=torch.tensor(keypoints, dtype=torch.float32, device=device),
        track_ids=torch.full((n,), -1, dtype=torch.long, device=device),
    )


def _run(
    config: TemporalConfig, dets: _Detections, pts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (F, P, K, 2) (NaN where not detected) and track ids (F, P) (-1 there)."""
    fusion = TemporalFusion(config)
    f, p = dets.present.shape
    out = np.full((f, p, K, 2), np.nan)
    ids = np.full((f, p), -1)
    for t in range(f):
        rows = np.flatnonzero(dets.present[t])
        when = t / FPS if pts is None else float(pts[t])
        res = fusion(_frame(t, when, dets.xy[t, rows], dets.score[t, rows]))
        assert torch.equal(res.scores, torch.ones(len(rows)))
        out[t, rows] = res.keypoints[..., :2].numpy()
        ids[t, rows] = res.track_ids.numpy()
    return out, ids


def _metrics(out: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    acceleration = out[2:] - 2 * out[1:-1] + out[:-2]
    error = out - gt
    velocity = np.gradient(gt, axis=0) * FPS
    seen = ~np.isnan(error[..., 0])
    lag = -np.sum((error * velocity).sum(-1)[seen]) / np.sum((velocity**2).sum(-1)[seen])
    return {
        "jitter": float(np.nanmean(np.linalg.norm(acceleration, axis=-1))),
        "lag_ms": 1000 * float(lag),
        "error": float(np.nanmean(np.linalg.norm(error, axis=-1))),
    }


def _ids_per_person(ids: np.ndarray) -> list[set[int]]:
    return [set(ids[:, p][ids[:, p] >= 0].tolist()) for p in range(ids.shape[1])]


# ----------------------------------------------------------------------------- smoothing quality


def test_softnms_lowers_jitter_and_error_without_lag() -> None:
    gt = _walkers(3, 3.0)
    dets = _noisy(gt, seed=1)
    raw = _metrics(_run(TemporalConfig(method="none"), dets)[0], gt)
    soft = _metrics(_run(TemporalConfig(method="softnms"), dets)[0], gt)
    euro = _metrics(_run(TemporalConfig(method="oneeuro"), dets)[0], gt)

    assert raw["jitter"] > 4.5 and abs(raw["lag_ms"]) < 2  # the noise is there, unbiased
    assert soft["jitter"] < 0.5 * raw["jitter"]
    assert soft["error"] < 0.92 * raw["error"]
    assert abs(soft["lag_ms"]) < 5  # an eighth of a frame at 25 fps
    # The default 1-euro filter trails the walkers and smooths less.
    assert soft["lag_ms"] < euro["lag_ms"]
    assert soft["jitter"] < euro["jitter"]


def test_softnms_beats_every_oneeuro_with_no_more_lag() -> None:
    gt = _walkers(3, 3.0)
    dets = _noisy(gt, seed=2)
    soft = _metrics(_run(TemporalConfig(method="softnms"), dets)[0], gt)
    as_fast = []
    for beta in (0.2, 0.5, 1.0, 3.0):  # min_cutoff matters little at walking speed
        config = TemporalConfig(method="oneeuro", one_euro=OneEuroConfig(1.0, beta))
        euro = _metrics(_run(config, dets)[0], gt)
        if euro["lag_ms"] <= soft["lag_ms"]:
            as_fast.append(euro)
    assert as_fast, "no 1-euro setting was as fast; the comparison would be empty"
    assert soft["jitter"] < 0.6 * min(e["jitter"] for e in as_fast)
    assert soft["error"] < min(e["error"] for e in as_fast)


LEGS, MIRRORED_LEGS = [13, 14, 15, 16], [14, 13, 16, 15]


def _scored(gt: np.ndarray, seed: int, swap_rate: float = 0.04) -> _Detections:
    """Detections as a pose network makes them: the lower a keypoint's score, the larger its
    error (0.13 (1 - score) of the person's size, about what the demo model does), and now and
    then the two legs swapped left for right."""
    rng = np.random.default_rng(seed)
    f, p, k, _ = gt.shape
    score = rng.uniform(0.35, 0.95, (f, p, k))
    size = np.sqrt((gt.max(2) - gt.min(2) + 20).prod(-1))[..., None, None]  # _frame's box
    xy = gt + rng.normal(0, 1, gt.shape) * 0.13 * size * (1 - score)[..., None]
    swapped = rng.random((f, p)) < swap_rate
    legs = swapped[:, :, None] & np.isin(np.arange(k), LEGS)[None, None]
    xy[legs] = xy[:, :, MIRRORED_LEGS][swapped].reshape(-1, 2)
    return _Detections(xy, score, rng.random((f, p)) >= 0.03)


@pytest.mark.parametrize("motion", ["walk", "swing"])
def test_kalman_lowers_error_and_jitter_of_walkers_and_fast_swings(motion: str) -> None:
    gt = _walkers(3, 3.0, motion=motion)
    dets = _scored(gt, seed=1)
    raw = _metrics(_run(TemporalConfig(method="none"), dets)[0], gt)
    kalman = _metrics(_run(TemporalConfig(), dets)[0], gt)
    soft = _metrics(_run(TemporalConfig(method="softnms"), dets)[0], gt)
    euro = _metrics(_run(TemporalConfig(method="oneeuro"), dets)[0], gt)
    # Measured: error 5.9 -> 3.6 px walking, 7.0 -> 4.8 swinging; jitter 0.33x and 0.46x.
    assert kalman["error"] < 0.75 * raw["error"]
    assert kalman["jitter"] < 0.55 * raw["jitter"]
    assert abs(kalman["lag_ms"]) < 10  # a quarter of a frame at 25 fps
    # The straight line of the old fusion and the 1-euro filter both err more.
    assert kalman["error"] < 0.85 * min(soft["error"], euro["error"])
    assert kalman["lag_ms"] < min(soft["lag_ms"], euro["lag_ms"])


def test_kalman_follows_constant_velocity_at_variable_frame_rate() -> None:
    pose = _walkers(1, 0.04)[0, 0]
    rng = np.random.default_rng(3)
    pts = np.cumsum(rng.uniform(0.015, 0.08, 40))  # 12 to 67 fps, irregular
    velocity = np.array([150.0, -40.0])  # pixels per second
    score = np.full(K, 0.9)
    score[[0, 9]] = 0.4  # low-scored keypoints move on the same line and converge too
    fusion = TemporalFusion()
    error = []
    for t, when in enumerate(pts):
        truth = pose + velocity * when
        out = fusion(_frame(t, when, truth, score)).keypoints[0, :, :2].numpy()
        error.append(np.abs(out - truth).max())
    assert error[0] == pytest.approx(0, abs=1e-4)  # a new track starts at its estimate
    assert max(error[1:]) < 4.0  # starting at rest, it catches up with the motion...
    assert max(error[-10:]) < 0.02  # ...and then has no lag


def _steady_then(fusion: TemporalFusion, pose: np.ndarray, last: np.ndarray, score: np.ndarray):
    """Feed a still pose for 10 frames at 25 fps, then `last` scored `score`; the last output."""
    for t in range(10):
        fusion(_frame(t, t / FPS, pose, np.full(K, 0.9)))
    return fusion(_frame(10, 10 / FPS, last, score)).keypoints[0].numpy()


def test_kalman_mirrors_swapped_legs_back() -> None:
    pose = _walkers(1, 0.04)[0, 0]
    pose[[13, 15], 0] -= 12.0  # legs apart, so a swap is visible
    pose[[14, 16], 0] += 12.0
    score = np.full(K, 0.9)
    score[13] = 0.6
    swapped = pose[list(range(13)) + MIRRORED_LEGS]
    out = _steady_then(TemporalFusion(), pose, swapped, score[list(range(13)) + MIRRORED_LEGS])
    np.testing.assert_allclose(out[:, :2], pose, atol=0.5)
    np.testing.assert_allclose(out[:, 2], score, atol=1e-6)  # the scores go with their joints
    off = _steady_then(
        TemporalFusion(TemporalConfig(kalman=KalmanConfig(swap_ratio=0))), pose, swapped, score
    )
    assert np.abs(off[LEGS, :2] - pose[LEGS]).max() > 10


def test_kalman_discounts_a_doubtful_jump_and_follows_a_confident_one() -> None:
    pose = _walkers(1, 0.04)[0, 0]
    moved = pose.copy()
    moved[9] += [30.0, -20.0]  # the left wrist jumps 36 px
    score = np.full(K, 0.9)
    followed = _steady_then(TemporalFusion(), pose, moved, score)
    assert np.linalg.norm(followed[9, :2] - moved[9]) < 5
    score[9] = 0.3  # the same jump, from a doubtful estimate, moves it a third of the way
    doubted = _steady_then(TemporalFusion(), pose, moved, score)
    assert np.linalg.norm(doubted[9, :2] - pose[9]) < 0.4 * np.linalg.norm(moved[9] - pose[9])
    np.testing.assert_allclose(doubted[:9, :2], pose[:9], atol=1e-3)  # still joints stay put


def test_constant_velocity_is_fused_without_lag_at_variable_frame_rate() -> None:
    pose = _walkers(1, 0.04)[0, 0]
    rng = np.random.default_rng(3)
    pts = np.cumsum(rng.uniform(0.015, 0.08, 40))  # 12 to 67 fps, irregular
    velocity = np.array([150.0, -40.0])  # pixels per second
    score = np.full(K, 0.9)
    score[[0, 9]] = 0.1  # low-scored keypoints move on the same line and stay exact too
    fusion = TemporalFusion(TemporalConfig(method="softnms"))
    euro = TemporalFusion(TemporalConfig(method="oneeuro"))
    euro_error = []
    for t, when in enumerate(pts):
        truth = pose + velocity * when
        frame = _frame(t, when, truth, score)
        out = fusion(frame).keypoints[0, :, :2].numpy()
        np.testing.assert_allclose(out, truth, atol=2e-3)
        euro_error.append(np.abs(euro(frame).keypoints[0, :, :2].numpy() - truth).max())
    assert max(euro_error[10:]) > 1.0  # the 1-euro filter trails a moving point


def _three_frames(
    fusion: TemporalFusion, old: np.ndarray, old_score: np.ndarray, current: np.ndarray
) -> np.ndarray:
    """Feed current, old, current at 25 fps (the time-symmetric window has velocity 0)."""
    score = np.full(K, 0.9)
    fusion(_frame(0, 0.0, current, score))
    fusion(_frame(1, 0.04, old, old_score))
    return fusion(_frame(2, 0.08, current, score)).keypoints[0].numpy()


def _oks_weight(old: np.ndarray, current: np.ndarray) -> float:
    """OKS of the old pose against the current one, with the current box area (as _frame)."""
    extent = current.max(0) - current.min(0) + 20
    truth = torch.tensor(np.concatenate([current, np.ones((K, 1))], -1))[None]
    guess = torch.tensor(np.concatenate([old, np.zeros((K, 1))], -1))[None]
    return float(oks(guess, truth, torch.tensor([extent[0] * extent[1]], dtype=torch.float64)))


def test_fusion_weights_old_poses_by_oks_as_eq20() -> None:
    current = _walkers(1, 0.04)[0, 0]
    old = current + np.random.default_rng(4).normal(0, 2.0, current.shape)
    w = _oks_weight(old, current)
    assert 0.5 < w < 0.99

    fused = _three_frames(
        TemporalFusion(TemporalConfig("softnms", window=3)), old, np.full(K, 0.9), current
    )
    expected = (current + w * old + 1.0 * current) / (1 + w + 1.0)  # Eq. (20), OKS_ii = 1
    np.testing.assert_allclose(fused[:, :2], expected, atol=1e-4)
    np.testing.assert_allclose(fused[:, 2], 0.9, atol=1e-6)  # scores pass through
    assert np.abs(fused[:, :2] - current).mean() > 0.3

    decayed = TemporalFusion(TemporalConfig("softnms", window=3, half_life_s=0.04))
    fused = _three_frames(decayed, old, np.full(K, 0.9), current)
    expected = (current + 0.5 * w * old + 0.25 * current) / (1 + 0.5 * w + 0.25)
    np.testing.assert_allclose(fused[:, :2], expected, atol=1e-4)

    # Outside Lambda: an old pose with OKS below fusion_min_oks is not fused at all.
    strict = TemporalFusion(TemporalConfig("softnms", window=3, fusion_min_oks=0.99))
    fused = _three_frames(strict, old, np.full(K, 0.9), current)
    np.testing.assert_allclose(fused[:, :2], current, atol=1e-4)


def test_low_scored_old_keypoint_does_not_pull() -> None:
    current = _walkers(1, 0.04)[0, 0]
    old = current + np.random.default_rng(5).normal(0, 2.0, current.shape)
    old[9] += 40.0  # left wrist far off
    w = _oks_weight(old, current)
    old_score = np.full(K, 0.9)
    old_score[9] = 0.1

    fused = _three_frames(
        TemporalFusion(TemporalConfig("softnms", window=3)), old, old_score, current
    )
    np.testing.assert_allclose(fused[9, :2], current[9], atol=1e-4)
    others = np.arange(K) != 9
    expected = (2 * current + w * old) / (2 + w)
    np.testing.assert_allclose(fused[others, :2], expected[others], atol=1e-4)

    # The same wrist with a confident score is fused and drags the result.
    trusted = _three_frames(
        TemporalFusion(TemporalConfig("softnms", window=3)), old, np.full(K, 0.9), current
    )
    assert np.linalg.norm(trusted[9, :2] - current[9]) > 5.0


class _ScalarOneEuro:
    """The 1-euro filter as Casiez et al. (2012) write it, for one scalar signal."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.t: float | None = None
        self.x = self.dx = 0.0

    @staticmethod
    def _alpha(te: float, cutoff: float) -> float:
        r = 2 * math.pi * cutoff * te
        return r / (r + 1)

    def __call__(self, t: float, x: float) -> float:
        if self.t is None:
            self.t, self.x, self.dx = t, x, 0.0
            return x
        te = t - self.t
        a_d = self._alpha(te, self.d_cutoff)
        dx = a_d * (x - self.x) / te + (1 - a_d) * self.dx
        a = self._alpha(te, self.min_cutoff + self.beta * abs(dx))
        self.t, self.x, self.dx = t, a * x + (1 - a) * self.x, dx
        return self.x


def test_oneeuro_matches_the_reference_filter() -> None:
    pose = _walkers(1, 0.04)[0, 0]
    rng = np.random.default_rng(6)
    pts = np.cumsum(rng.uniform(0.02, 0.06, 30))
    absent = {12, 13}  # missed: the next sample comes after a longer interval
    params = OneEuroConfig(min_cutoff=0.8, beta=0.02, d_cutoff=1.5)
    fusion = TemporalFusion(TemporalConfig(method="oneeuro", one_euro=params))
    reference = [_ScalarOneEuro(params.min_cutoff, params.beta, params.d_cutoff) for _ in range(K)]
    for t, when in enumerate(pts):
        if t in absent:
            assert len(fusion(_frame(t, when, np.zeros((0, K, 2)), np.zeros((0, K))))) == 0
            continue
        xy = pose.copy()
        xy[:, 0] += 90.0 * when + rng.normal(0, 1.5, K)  # motion along x only
        out = fusion(_frame(t, when, xy, np.full(K, 0.9))).keypoints[0].numpy()
        expected = [f(when, x) for f, x in zip(reference, xy[:, 0], strict=True)]
        np.testing.assert_allclose(out[:, 0], expected, atol=1e-3)
        np.testing.assert_allclose(out[:, 1], pose[:, 1], atol=1e-4)


@pytest.mark.parametrize("method", ["kalman", "softnms"])
def test_predicted_boxes_follow_the_tracks_to_the_next_frame(method: str) -> None:
    gt = _walkers(3, 1.0)
    fusion = TemporalFusion(TemporalConfig(method=method))
    assert fusion.predicted_boxes(0.0).shape == (0, 4)
    score = np.full((3, K), 0.9)
    for t in range(20):
        fusion(_frame(t, t / FPS, gt[t], score))
    # Frame 20 has no detection: boxes for the three people of frame 19, moved on by 1/FPS.
    boxes = fusion.predicted_boxes(20 / FPS, image_size=(240, 320)).numpy()
    truth = torch.tensor(np.concatenate([gt[20], score[..., None]], -1))
    expected = boxes_from_keypoints(truth, image_size=(240, 320)).numpy()
    stale = boxes_from_keypoints(
        torch.tensor(np.concatenate([gt[19], score[..., None]], -1)), image_size=(240, 320)
    ).numpy()
    assert boxes.shape == (3, 4)

    def centres(b: np.ndarray) -> np.ndarray:
        return (b[:, :2] + b[:, 2:]) / 2

    # The body moves on with its track; the limbs' own swing in that frame is not predicted.
    moved = np.abs(centres(boxes) - centres(expected)).mean()
    assert moved < 0.5 * np.abs(centres(stale) - centres(expected)).mean()
    assert np.abs(boxes - expected).mean() < np.abs(stale - expected).mean()


# ----------------------------------------------------------------------------- track ids
# ----------------------------------------------------------------------------- track ids


def test_ids_stay_with_people_who_cross() -> None:
    gt = _walkers(2, 3.0)
    gap = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=-1).mean(-1)
    mid = int(gap.argmin())
    assert gap[mid] < 15  # the two skeletons overlap: mean keypoint distance under 15 px
    for seed in range(3):
        dets = _noisy(gt, seed, sigma=2.0, miss_rate=0.05)
        dets.present[mid - 1 : mid + 2, 1] = False  # hidden behind the other one
        dets.present[mid + 2 : mid + 4, 0] = False
        _, ids = _run(TemporalConfig(), dets)
        first, second = _ids_per_person(ids)
        assert (first, second) in (({0}, {1}), ({1}, {0})), (seed, first, second)


def test_tracks_survive_max_missed_frames_then_end() -> None:
    gt = _walkers(3, 3.0)[:, [0, 2]]  # two walkers that never meet
    dets = _noisy(gt, seed=7)
    dets.present[:] = True
    dets.present[:35, 1] = False  # the second person walks in at frame 35
    dets.present[20:30, 0] = False  # 10 missed frames: the track survives
    dets.present[45:56, 0] = False  # 11 missed frames: the track ends
    _, ids = _run(TemporalConfig(max_missed=10), dets)
    assert set(ids[:45, 0].tolist()) == {0, -1}
    assert set(ids[35:, 1].tolist()) == {1}  # a new person, the next id
    assert set(ids[56:, 0].tolist()) == {2}  # back after too long: a new track


def test_empty_frames_and_many_people() -> None:
    template = _walkers(1, 0.04)[0, 0]
    template = (template - template.mean(0)) * 0.35  # about 50 px tall
    grid = np.stack(np.meshgrid(np.arange(6) * 70.0 + 40, np.arange(5) * 80.0 + 40), -1)
    people = template + grid.reshape(-1, 1, 2)  # (30, K, 2)
    rng = np.random.default_rng(8)
    fusion = TemporalFusion()

    empty = fusion(FramePoses.empty(0, 0.0))
    assert empty.keypoints.shape == (0, K, 3) and empty.track_ids.shape == (0,)
    assert empty.track_ids.dtype == torch.long

    owner: dict[int, int] = {}
    for t in range(1, 9):
        if t == 4:
            assert len(fusion(FramePoses.empty(t, t / FPS))) == 0
            continue
        order = rng.permutation(len(people))
        xy = people[order] + rng.normal(0, 1.0, people.shape)
        out = fusion(_frame(t, t / FPS, xy, np.full((len(people), K), 0.9)))
        for person, track in zip(order.tolist(), out.track_ids.tolist(), strict=True):
            assert owner.setdefault(person, track) == track
    assert sorted(owner.values()) == list(range(len(people)))


def test_state_is_per_instance_and_reset_clears_it() -> None:
    gt = _walkers(3, 0.8)
    dets = _noisy(gt, seed=9)
    dets.present[:] = True
    first, second, alone = TemporalFusion(), TemporalFusion(), TemporalFusion()
    for t in range(gt.shape[0]):
        a = first(_frame(t, t / FPS, dets.xy[t, :2], dets.score[t, :2]))
        b = second(_frame(t, t / FPS, dets.xy[t, 2:], dets.score[t, 2:]))
        c = alone(_frame(t, t / FPS, dets.xy[t, 2:], dets.score[t, 2:]))
        assert a.track_ids.tolist() == [0, 1] and b.track_ids.tolist() == [0]
        assert torch.equal(b.keypoints, c.keypoints)

    first.reset()
    again = first(_frame(0, 0.0, dets.xy[5, 2:], dets.score[5, 2:]))  # time may restart
    assert again.track_ids.tolist() == [0]
    np.testing.assert_allclose(again.keypoints[0, :, :2].numpy(), dets.xy[5, 2], atol=1e-4)


def test_people_beyond_capacity_get_no_track(caplog: pytest.LogCaptureFixture) -> None:
    gt = _walkers(3, 0.12)
    fusion = TemporalFusion(TemporalConfig(max_tracks=2))
    with caplog.at_level(logging.WARNING, logger="realtime.temporal.fusion"):
        for t in range(gt.shape[0]):
            out = fusion(_frame(t, t / FPS, gt[t], np.full((3, K), 0.9)))
            assert out.track_ids.tolist() == [0, 1, -1]
            np.testing.assert_allclose(out.keypoints[2, :, :2].numpy(), gt[t, 2], atol=1e-4)
    assert "max_tracks=2" in caplog.text


def test_bad_input_is_refused() -> None:
    pose = _walkers(1, 0.04)[0]
    fusion = TemporalFusion()
    fusion(_frame(0, 1.0, pose, np.full((1, K), 0.9)))
    with pytest.raises(ValueError, match="does not follow the previous frame"):
        fusion(_frame(1, 1.0, pose, np.full((1, K), 0.9)))
    with pytest.raises(ValueError, match="14 keypoints per person"):
        fusion(FramePoses.empty(2, 2.0, num_keypoints=14))
    with pytest.raises(ValueError, match="torch tensors"):
        fusion(_frame(3, 3.0, pose, np.full((1, K), 0.9)).numpy())
    with pytest.raises(ValueError, match="method must be one of"):
        TemporalConfig(method="particle")
    with pytest.raises(ValueError, match="kalman.accel needs one value per keypoint"):
        TemporalConfig(kalman=KalmanConfig(accel=(1.0,) * 14))
    with pytest.raises(ValueError, match="swap_groups must index"):
        TemporalConfig(swap_groups=((7, 8, 9, 17),))
    with pytest.raises(ValueError, match="noise, accel, gate"):
        KalmanConfig(noise=0.0)
    with pytest.raises(ValueError, match="swap_ratio"):
        KalmanConfig(swap_ratio=1.0)
    with pytest.raises(ValueError, match="window >= 1"):
        TemporalConfig(window=0)
    with pytest.raises(ValueError, match="half_life_s"):
        TemporalConfig(half_life_s=0.0)
    with pytest.raises(ValueError, match="match_min_oks"):
        TemporalConfig(match_min_oks=1.5)
    with pytest.raises(ValueError, match="min_cutoff > 0"):
        OneEuroConfig(min_cutoff=0.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["kalman", "softnms", "oneeuro"])
def test_cuda_matches_cpu_without_host_sync(method: str) -> None:
    gt = _walkers(3, 1.0)
    dets = _noisy(gt, seed=10)
    frames = []
    for t in range(gt.shape[0]):
        rows = np.flatnonzero(dets.present[t])
        frames.append(_frame(t, t / FPS, dets.xy[t, rows], dets.score[t, rows]))
    config = TemporalConfig(method=method)
    cpu_fusion, cuda_fusion = TemporalFusion(config), TemporalFusion(config)
    on_cpu = [cpu_fusion(f) for f in frames]
    cuda_frames = [f.to("cuda") for f in frames]
    cuda_fusion(cuda_frames[0])  # the constants move to the device once, at the first frame
    cuda_fusion.reset()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_cuda = [cuda_fusion(f) for f in cuda_frames]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(on_cpu, on_cuda, strict=True):
        assert a.track_ids.tolist() == b.track_ids.tolist()
        torch.testing.assert_close(b.keypoints.cpu(), a.keypoints, atol=1e-3, rtol=0)


def test_fused_joints_stay_within_one_box_size_of_the_persons_box():
    from realtime.temporal.smoothing import within_reach

    boxes = torch.tensor([[100.0, 50.0, 140.0, 130.0]])  # 40 x 80
    xy = torch.tensor([[[120.0, 90.0], [300.0, -200.0], [20.0, 500.0]]])
    out = within_reach(xy, boxes)
    torch.testing.assert_close(out, torch.tensor([[[120.0, 90.0], [180.0, -30.0], [60.0, 210.0]]]))
