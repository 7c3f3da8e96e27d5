"""OKS against pycocotools, OKS-NMS against a plain greedy loop, and Soft-NMS fusion (Eq. 20-21)."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ccm.nms import (
    fuse_poses,
    greedy_suppression,
    nms_similarity,
    oks,
    oks_nms,
    soft_nms_fusion,
)
from ccm.skeleton import COCO_KEYPOINTS, COCO_SIGMAS

K = len(COCO_KEYPOINTS)


def _random_scene(rng: np.random.Generator, num_gt: int, num_dt: int):
    """Ground truths with random visibilities and areas; detections jittered around them."""
    gt_xy = rng.uniform(0, 300, size=(num_gt, K, 2))
    gt_v = rng.choice([0, 1, 2], size=(num_gt, K), p=[0.3, 0.2, 0.5])
    gt_v[:, 0] = 2  # at least one labelled keypoint per person (see test_oks_no_visible...)
    areas = rng.uniform(300, 30000, size=num_gt)
    owner = rng.integers(0, num_gt, size=num_dt)
    noise = rng.uniform(0.5, 25, size=(num_dt, 1, 1))
    dt_xy = gt_xy[owner] + rng.normal(size=(num_dt, K, 2)) * noise
    dt_s = rng.uniform(0, 1, size=(num_dt, K))
    gt = np.concatenate([gt_xy, gt_v[..., None]], -1)
    dt = np.concatenate([dt_xy, dt_s[..., None]], -1)
    return gt, dt, areas


def _pycocotools_oks(gt: np.ndarray, dt: np.ndarray, areas: np.ndarray, dt_scores: np.ndarray):
    """computeOks on one in-memory image; rows come back in pycocotools' score order."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 640, "height": 480}],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINTS)}],
        "annotations": [
            {
                "id": j + 1,
                "image_id": 1,
                "category_id": 1,
                "keypoints": g.reshape(-1).tolist(),
                "num_keypoints": int((g[:, 2] > 0).sum()),
                "area": float(a),
                "bbox": [0.0, 0.0, 10.0, 10.0],
                "iscrowd": 0,
            }
            for j, (g, a) in enumerate(zip(gt, areas, strict=True))
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        results = coco.loadRes(
            [
                {"image_id": 1, "category_id": 1, "keypoints": d.reshape(-1).tolist(), "score": s}
                for d, s in zip(dt, dt_scores, strict=True)
            ]
        )
        ev = COCOeval(coco, results, "keypoints")
        ev.params.imgIds = [1]
        ev.evaluate()
    return np.asarray(ev.ious[(1, 1)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oks_matches_pycocotools_compute_oks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_gt, num_dt = 6, 11  # N != M, and under pycocotools' 20-detection cut
    gt, dt, areas = _random_scene(rng, num_gt, num_dt)
    dt_scores = rng.permutation(num_dt) / num_dt + 0.01  # distinct, so the sort is unambiguous
    ref = _pycocotools_oks(gt, dt, areas, dt_scores)
    order = np.argsort(-dt_scores, kind="mergesort")  # the order computeOks uses for its rows

    ours = oks(torch.from_numpy(dt), torch.from_numpy(gt), torch.from_numpy(areas))
    assert ours.shape == (num_dt, num_gt) and ours.dtype == torch.float64
    # The scene must exercise the whole range, or agreement would prove little.
    assert ref.max() > 0.8 and ref.min() < 0.01
    np.testing.assert_allclose(ours.numpy()[order], ref, rtol=0, atol=1e-12)

    ours32 = oks(
        torch.from_numpy(dt).float(), torch.from_numpy(gt).float(), torch.from_numpy(areas).float()
    )
    assert ours32.dtype == torch.float32
    np.testing.assert_allclose(ours32.numpy()[order], ref, rtol=0, atol=1e-6)


def test_oks_with_itself_is_one_and_ignores_detection_visibility() -> None:
    rng = np.random.default_rng(3)
    gt, _, areas = _random_scene(rng, 4, 1)
    gt_t, areas_t = torch.from_numpy(gt), torch.from_numpy(areas)
    dt_t = gt_t.clone()
    dt_t[..., 2] = torch.from_numpy(rng.uniform(-1, 1, size=(4, K)))
    sim = oks(dt_t, gt_t, areas_t)
    torch.testing.assert_close(sim.diagonal(), torch.ones(4, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(sim, oks(gt_t, gt_t, areas_t), rtol=0, atol=0)


def test_oks_decays_as_gaussian_of_distance() -> None:
    # One labelled keypoint (left hip, sigma 0.107), area 900: OKS = exp(-d^2 / (8 sigma^2 area)).
    area, sigma = 900.0, COCO_SIGMAS[11]
    gt = torch.zeros(1, K, 3, dtype=torch.float64)
    gt[0, :, :2] = 50.0
    gt[0, 11, 2] = 2
    gt[0, 3, :2] = 1000.0  # unlabelled keypoints may lie anywhere: they do not count
    dists = torch.tensor([0.0, 1.0, 3.0, 7.5, 20.0], dtype=torch.float64)
    dt = gt.repeat(len(dists), 1, 1)
    dt[:, 11, 0] += dists * 0.6
    dt[:, 11, 1] -= dists * 0.8
    dt[:, 5, :2] += 40.0  # a detection's keypoint against an unlabelled one: no effect
    sim = oks(dt, gt, torch.tensor([area], dtype=torch.float64))[:, 0]
    expected = torch.exp(-(dists**2) / (8 * sigma**2 * area))
    torch.testing.assert_close(sim, expected, rtol=1e-13, atol=0)
    assert sim[3].item() == pytest.approx(math.exp(-56.25 / 82.4328), rel=1e-12)  # 0.50544...


def test_oks_all_keypoints_averaged_and_translation_invariant() -> None:
    # All 17 labelled, every keypoint shifted by (3, 4): OKS = mean_k exp(-25 / (8 sigma_k^2 A)).
    area = 5000.0
    gt = torch.rand(1, K, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gt[..., 2] = 1
    dt = gt.clone()
    dt[..., 0] += 3
    dt[..., 1] += 4
    sig = torch.tensor(COCO_SIGMAS, dtype=torch.float64)
    expected = torch.exp(-25 / (8 * sig**2 * area)).mean()  # 0.88846...
    areas = torch.tensor([area], dtype=torch.float64)
    assert oks(dt, gt, areas).item() == pytest.approx(expected.item(), rel=1e-13)
    shift = torch.tensor([123.0, -45.0, 0.0], dtype=torch.float64)
    assert oks(dt + shift, gt + shift, areas).item() == pytest.approx(expected.item(), rel=1e-12)


def test_oks_no_visible_ground_truth_keypoint_gives_zero() -> None:
    gt = torch.zeros(2, K, 3)
    gt[1, 4, 2] = 1  # the second person has one labelled keypoint, the first has none
    dt = torch.zeros(3, K, 3)
    sim = oks(dt, gt, torch.tensor([100.0, 100.0]))
    torch.testing.assert_close(sim, torch.tensor([[0.0, 1.0]] * 3), rtol=0, atol=0)


def test_oks_shapes_and_empty_inputs() -> None:
    a, b = torch.rand(3, K, 3), torch.rand(5, K, 3)
    assert oks(a, b, torch.full((5,), 50.0)).shape == (3, 5)
    assert oks(a[:0], b, torch.full((5,), 50.0)).shape == (0, 5)
    assert oks(a, b[:0], torch.zeros(0)).shape == (3, 0)
    half = oks(a.half(), b.half(), torch.full((5,), 50.0).half())
    assert half.dtype == torch.float32


def test_oks_rejects_bad_shapes() -> None:
    a, b = torch.rand(3, K, 3), torch.rand(5, K, 3)
    with pytest.raises(ValueError, match=r"a must be a tensor of shape \(N, K, 3\)"):
        oks(a[..., :2], b, torch.ones(5))
    with pytest.raises(ValueError, match="same number of keypoints"):
        oks(a[:, :5], b, torch.ones(5))
    with pytest.raises(ValueError, match=r"areas must be a tensor of shape \(5,\)"):
        oks(a, b, torch.ones(3))
    with pytest.raises(ValueError, match=r"one value per keypoint \(17\)"):
        oks(a, b, torch.ones(5), sigmas=COCO_SIGMAS[:5])


def _shifted(base: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    pose = base.clone()
    pose[:, 0] += dx
    pose[:, 1] += dy
    return pose


def test_oks_nms_hand_made_greedy_chain() -> None:
    # All poses are one skeleton shifted, area 10000, every keypoint counted. A uniform shift d
    # gives OKS = mean_k exp(-d^2 / (8 sigma_k^2 10000)): d=2.5 -> 0.9637, d=4 -> 0.9128,
    # d=5 -> 0.8712, d=sqrt(41) -> ~0.80.
    #   A  (0, 0)   0.9  kept
    #   A' (2.5, 0) 0.8  OKS(A, A') = 0.9637 > 0.9: suppressed by A
    #   E  (0, 4)   0.6  OKS(A, E) = 0.9128 > 0.9: suppressed by A
    #   C  (5, 0)   0.7  OKS(A, C) = 0.8712: kept, although OKS(A', C) = 0.9637, because A'
    #                    was already gone (a non-greedy "any better neighbour" rule drops C)
    #   D  (300, 0) 0.3  far from all: kept
    base = torch.zeros(K, 3, dtype=torch.float64)
    base[:, 0] = 100 + 5 * torch.arange(K)
    base[:, 1] = 200 + 10 * torch.arange(K)
    base[:, 2] = 0.9
    poses = torch.stack(
        [
            _shifted(base, 5, 0),
            _shifted(base, 300, 0),
            _shifted(base, 0, 0),
            _shifted(base, 2.5, 0),
            _shifted(base, 0, 4),
        ]
    )  # C, D, A, A', E
    scores = torch.tensor([0.7, 0.3, 0.9, 0.8, 0.6], dtype=torch.float64)
    areas = torch.full((5,), 10000.0, dtype=torch.float64)

    sim = nms_similarity(poses, areas)
    assert sim[2, 3].item() == pytest.approx(0.9637343501541112, abs=1e-12)
    assert sim[2, 0].item() == pytest.approx(0.8711549523382005, abs=1e-12)
    keep = oks_nms(poses, scores, areas, threshold=0.9)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [2, 0, 1]
    owner = greedy_suppression(sim, scores, 0.9)
    assert owner.tolist() == [0, 1, 2, 2, 2]  # A' and E belong to A
    # At 0.95, E (0.9128 with A) survives too; A' (0.9637) still does not.
    assert oks_nms(poses, scores, areas, threshold=0.95).tolist() == [2, 0, 4, 1]


def test_greedy_suppression_owners_match_a_plain_walk_on_random_similarities() -> None:
    torch.manual_seed(0)
    for n in [1, 2, 7, 40] * 20:
        sim, scores = torch.rand(n, n), torch.randint(0, 5, (n,)).float()  # score ties too
        order = sorted(range(n), key=lambda i: (-scores[i].item(), i))
        owner = list(range(n))  # owner[j] == j while j is alive
        for rank, i in enumerate(order):  # the walk the docstring describes
            for j in order[rank + 1 :]:
                if owner[i] == i and owner[j] == j and sim[i, j] + sim[j, i] > 1.2:
                    owner[j] = i
        assert greedy_suppression(sim + sim.T, scores, 1.2).tolist() == owner


def _greedy_reference(poses, scores, areas, thr, sigmas, vis_thr):
    """A plain per-pose loop: HRNet / MMPose oks_nms with MMPose's vis_thr on both poses."""
    vars_ = (np.asarray(sigmas) * 2) ** 2
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i, rest = order[0], order[1:]
        keep.append(i)
        survivors = []
        for j in rest:
            d2 = ((poses[i, :, :2] - poses[j, :, :2]) ** 2).sum(-1)
            e = d2 / vars_ / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            if vis_thr is not None:
                e = e[(poses[i, :, 2] > vis_thr) & (poses[j, :, 2] > vis_thr)]
            sim = np.exp(-e).mean() if len(e) else 0.0
            if sim <= thr:
                survivors.append(j)
        order = survivors
    return keep


@pytest.mark.parametrize("vis_thr", [None, 0.3])
def test_oks_nms_matches_plain_greedy_loop(vis_thr: float | None) -> None:
    rng = np.random.default_rng(7)
    centres = rng.uniform(0, 200, size=(4, K, 2))
    owner = np.repeat(np.arange(4), 6)
    xy = centres[owner] + rng.normal(size=(24, K, 2)) * rng.uniform(0.5, 8, size=(24, 1, 1))
    poses = np.concatenate([xy, rng.uniform(0, 1, size=(24, K, 1))], -1)
    scores = rng.uniform(0, 1, size=24)
    areas = rng.uniform(2000, 12000, size=24)
    ref = _greedy_reference(poses, scores, areas, 0.9, COCO_SIGMAS, vis_thr)
    assert 4 < len(ref) < 24  # some but not all duplicates are suppressed
    keep = oks_nms(
        torch.from_numpy(poses),
        torch.from_numpy(scores),
        torch.from_numpy(areas),
        threshold=0.9,
        vis_thr=vis_thr,
    )
    assert keep.tolist() == ref


def test_fuse_poses_is_weighted_mean_eq20() -> None:
    # Row 0: x = (1*0 + 0.5*4 + 0.25*8) / 1.75 = 4 / 1.75 = 2.285714..., y = 1.
    # Row 1: weight only on pose 2: (8, 3).
    poses = torch.tensor([[[0.0, 1.0]], [[4.0, 1.0]], [[8.0, 3.0]]], dtype=torch.float64)
    weights = torch.tensor([[1.0, 0.5, 0.25], [0.0, 0.0, 2.0]], dtype=torch.float64)
    fused = fuse_poses(poses, weights)
    expected = torch.tensor(
        [[[4 / 1.75, (1 + 0.5 + 0.75) / 1.75]], [[8.0, 3.0]]], dtype=torch.float64
    )
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"weights must have shape \(M, 3\)"):
        fuse_poses(poses, weights[:, :2])


def test_soft_nms_fusion_hand_computed() -> None:
    # One keypoint, sigma 0.5, every area 50: OKS = exp(-d^2 / (8 * 0.25 * 50)) = exp(-d^2 / 100).
    #   P0 (10, 10) 0.9   top-ranked, kept
    #   P1 (12, 10) 0.8   d=2 from P0: OKS exp(-0.04) = 0.960789 > 0.9, in Lambda_0
    #   P2 (10,  7) 0.7   d=3 from P0: OKS exp(-0.09) = 0.913931 > 0.9, in Lambda_0
    #   P3 (50, 50) 0.6   far: kept alone
    #   P4 (14, 10) 0.5   d=4 from P0: exp(-0.16) = 0.852 (kept; its neighbour P1 is gone)
    # Eq. (20): S = 1 + 0.960789 + 0.913931 = 2.874721,
    #   x*_0 = (10 + 12 * 0.960789 + 10 * 0.913931) / S = 10 + 2 * 0.960789 / S = 10.668440
    #   y*_0 = (10 + 10 * 0.960789 +  7 * 0.913931) / S = 10 - 3 * 0.913931 / S =  9.046240
    # Keypoint and instance scores stay those of the kept pose.
    poses = torch.tensor(
        [
            [[10.0, 10.0, 0.8]],
            [[12.0, 10.0, 0.3]],
            [[10.0, 7.0, 0.2]],
            [[50.0, 50.0, 0.7]],
            [[14.0, 10.0, 0.1]],
        ],
        dtype=torch.float64,
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], dtype=torch.float64)
    areas = torch.full((5,), 50.0, dtype=torch.float64)
    fused, fused_scores, keep = soft_nms_fusion(poses, scores, areas, 0.9, sigmas=(0.5,))
    assert keep.tolist() == [0, 3, 4]
    torch.testing.assert_close(fused_scores, scores[[0, 3, 4]], rtol=0, atol=0)
    w1, w2 = math.exp(-0.04), math.exp(-0.09)
    s = 1 + w1 + w2
    assert fused[0, 0, 0].item() == pytest.approx(10.668440217104564, abs=1e-12)
    assert fused[0, 0, 1].item() == pytest.approx(9.046239995455739, abs=1e-12)
    assert fused[0, 0, 0].item() == pytest.approx(10 + 2 * w1 / s, abs=1e-12)
    torch.testing.assert_close(fused[0, 0, 2], poses[0, 0, 2], rtol=0, atol=0)
    torch.testing.assert_close(fused[1:], poses[[3, 4]], rtol=0, atol=0)


def test_soft_nms_fusion_pose_without_confident_keypoints_stays_put() -> None:
    # With vis_thr 0.5, pose 1 has no keypoint above it: its OKS with every pose, itself
    # included, is 0. It is kept, and its own weight of 1 (Eq. 20: OKS_ii = 1) keeps the
    # fusion finite and equal to the pose itself.
    poses = torch.rand(2, K, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    poses[0, :, 2] = 0.9
    poses[1, :, 2] = 0.1
    scores = torch.tensor([0.4, 0.8], dtype=torch.float64)
    areas = torch.full((2,), 1000.0, dtype=torch.float64)
    assert nms_similarity(poses, areas, vis_thr=0.5)[1, 1].item() == 0.0
    fused, _, keep = soft_nms_fusion(poses, scores, areas, vis_thr=0.5)
    assert keep.tolist() == [1, 0]
    torch.testing.assert_close(fused, poses[[1, 0]], rtol=0, atol=0)


def test_soft_nms_fusion_keeps_oks_nms_selection() -> None:
    rng = np.random.default_rng(11)
    centres = rng.uniform(0, 200, size=(3, K, 2))
    xy = centres[np.repeat(np.arange(3), 5)] + rng.normal(size=(15, K, 2)) * 2
    poses = torch.from_numpy(np.concatenate([xy, rng.uniform(0, 1, size=(15, K, 1))], -1))
    scores, areas = torch.from_numpy(rng.uniform(size=15)), torch.full((15,), 8000.0).double()
    fused, fused_scores, keep = soft_nms_fusion(poses, scores, areas)
    assert keep.tolist() == oks_nms(poses, scores, areas).tolist()
    assert fused.shape == (len(keep), K, 3) and fused_scores.shape == (len(keep),)
    # Duplicates within 2 px: fused points move, but by less than the spread of the group.
    shift = (fused[..., :2] - poses[keep, :, :2]).norm(dim=-1)
    assert shift.max() > 0.1 and shift.max() < 8.0
    torch.testing.assert_close(fused[..., 2], poses[keep, :, 2], rtol=0, atol=0)


def test_nms_empty_input() -> None:
    poses, scores, areas = torch.zeros(0, K, 3), torch.zeros(0), torch.zeros(0)
    keep = oks_nms(poses, scores, areas)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    fused, fused_scores, keep = soft_nms_fusion(poses, scores, areas)
    assert fused.shape == (0, K, 3) and fused_scores.shape == (0,) and keep.shape == (0,)
    assert nms_similarity(poses, areas).shape == (0, 0)


def test_nms_rejects_bad_shapes() -> None:
    poses = torch.rand(4, K, 3)
    with pytest.raises(ValueError, match=r"scores must be a tensor of shape \(4,\)"):
        oks_nms(poses, torch.rand(3), torch.ones(4))
    with pytest.raises(ValueError, match=r"areas must be a tensor of shape \(4,\)"):
        soft_nms_fusion(poses, torch.rand(4), torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"similarity must have shape \(4, 4\)"):
        greedy_suppression(torch.rand(4, 3), torch.rand(4), 0.9)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_greedy_suppression_runs_on_cuda_without_host_sync() -> None:
    gen = torch.Generator().manual_seed(5)
    poses = torch.rand(30, K, 3, generator=gen, dtype=torch.float64) * 40
    scores, areas = torch.rand(30, generator=gen, dtype=torch.float64), torch.full((30,), 900.0)
    sim = nms_similarity(poses, areas.double()).cuda()
    scores_cuda = scores.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        owner = greedy_suppression(sim, scores_cuda, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert owner.tolist() == greedy_suppression(sim.cpu(), scores, 0.5).tolist()
    fused, _, keep = soft_nms_fusion(poses.cuda(), scores_cuda, areas.double().cuda(), 0.5)
    ref_fused, _, ref_keep = soft_nms_fusion(poses, scores, areas.double(), 0.5)
    assert keep.tolist() == ref_keep.tolist()
    torch.testing.assert_close(fused.cpu(), ref_fused, rtol=0, atol=1e-10)


def test_rescore_hand_made():
    from ccm.nms import rescore

    box = torch.tensor([0.8, 0.5, 1.0])
    keypoints = torch.tensor([[0.9, 0.3, 0.1], [0.2, 0.2, 0.1], [0.6, 0.25, 0.21]])
    # Row 0: mean(0.9, 0.3) = 0.6; row 1: nothing above 0.2 -> 0; row 2: mean(0.6, 0.25, 0.21).
    expected = torch.tensor([0.8 * 0.6, 0.0, (0.6 + 0.25 + 0.21) / 3])
    torch.testing.assert_close(rescore(box, keypoints), expected)
