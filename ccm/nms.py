"""Pose similarity (OKS), greedy OKS-NMS, and Soft-NMS fusion of duplicate poses (Eq. 20-21).

Every pose is a (K, 3) tensor of x, y and a third value (visibility for ground truth, a
confidence for estimates) in one common pixel space, usually image pixels; areas are in
the same pixels squared. All functions are batched torch ops on the inputs' device.

- `oks` is COCO's Object Keypoint Similarity exactly as pycocotools' `COCOeval.computeOks`
  computes it (detections against ground truth).
- `nms_similarity` is the symmetric pose-to-pose OKS that HRNet / MMPose `oks_nms` use.
- `greedy_suppression` runs the greedy selection on a similarity matrix without host syncs.
- `fuse_poses` is Eq. (20) on any weight matrix; the temporal stage reuses it across frames.
- `suppress_duplicates` is OKS-NMS or Soft-NMS fusion as masks, for many frames at once;
  `oks_nms` and `soft_nms_fusion` give the same for one frame's poses, with the rest dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ccm.skeleton import COCO_SIGMAS

# pycocotools adds np.spacing(1) to the area so that a zero area does not divide by zero.
_AREA_EPS = float(np.spacing(1))

NMS_METHODS = ("softnms", "oks", "none")  # Soft-NMS fusion Eq. (20)-(21), plain OKS-NMS, off


def _check_poses(name: str, poses: Tensor) -> None:
    if not isinstance(poses, Tensor) or poses.ndim != 3 or poses.shape[-1] != 3:
        shape = tuple(poses.shape) if isinstance(poses, Tensor) else type(poses).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, K, 3) as x, y, v; got {shape}")


def _check_vector(name: str, values: Tensor, length: int) -> None:
    if not isinstance(values, Tensor) or values.shape != (length,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a tensor of shape ({length},); got {shape}")


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    # At least float32: squared pixel distances over (sigma^2 * area) overflow float16.
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.promote_types(dtype, torch.float32)


def _sigma_vars(sigmas: Sequence[float] | Tensor, num_keypoints: int, like: Tensor) -> Tensor:
    """pycocotools' `vars = (sigmas * 2) ** 2`, shape (K,), on `like`'s device and dtype."""
    sig = torch.as_tensor(sigmas, dtype=like.dtype, device=like.device)
    if sig.shape != (num_keypoints,):
        raise ValueError(
            f"sigmas must have one value per keypoint ({num_keypoints}); got shape "
            f"{tuple(sig.shape)}"
        )
    return (sig * 2) ** 2


def _masked_oks(a_xy: Tensor, b_xy: Tensor, scale: Tensor, mask: Tensor, vars_: Tensor) -> Tensor:
    """Mean over masked keypoints of exp(-d^2 / vars / (scale + eps) / 2); 0 where none is masked.

    a_xy (N, K, 2), b_xy (M, K, 2); scale broadcastable to (N, M) (an area, pixels^2);
    mask broadcastable to (N, M, K) bool; vars_ (K,). Returns (N, M).
    """
    d2 = (a_xy[:, None] - b_xy[None]).square().sum(-1)  # (N, M, K)
    e = d2 / vars_ / (scale[..., None] + _AREA_EPS) / 2
    mask = mask.expand_as(e)
    total = torch.where(mask, torch.exp(-e), torch.zeros_like(e)).sum(-1)
    count = mask.sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def oks(
    a: Tensor, b: Tensor, areas: Tensor, sigmas: Sequence[float] | Tensor = COCO_SIGMAS
) -> Tensor:
    """Object Keypoint Similarity of every pose in `a` against every pose in `b`.

    a (N, K, 3) detections, b (M, K, 3) ground truth, both as x, y, v in one pixel space;
    areas (M,) the areas of b's poses in those pixels squared; sigmas (K,).
    Returns (N, M) in the promoted floating dtype (at least float32).

    This is pycocotools' `COCOeval.computeOks` with `a` as detections and `b` as ground truth:
    e = d^2 / (2 sigma)^2 / (area + eps) / 2, averaged as exp(-e) over b's keypoints with
    v > 0. `a`'s third channel is ignored, as pycocotools ignores detection visibilities.

    A pose in b with no keypoint of v > 0 gets OKS 0 against every pose in a. (pycocotools
    instead measures the distance to a region twice the size of the ground-truth box, which
    needs boxes this function does not take.)
    """
    _check_poses("a", a)
    _check_poses("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have the same number of keypoints; got {a.shape[1]} and {b.shape[1]}"
        )
    _check_vector("areas", areas, b.shape[0])
    dtype = _float_dtype(a, b, areas)
    a, b, areas = a.to(dtype), b.to(dtype), areas.to(dtype)
    vars_ = _sigma_vars(sigmas, a.shape[1], a)
    visible = (b[..., 2] > 0)[None]  # (1, M, K)
    return _masked_oks(a[..., :2], b[..., :2], areas[None], visible, vars_)


def nms_similarity(
    poses: Tensor,
    areas: Tensor,
    sigmas: Sequence[float] | Tensor = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> Tensor:
    """Symmetric pose-to-pose OKS used for OKS-NMS, as HRNet / MMPose `oks_iou`.

    poses (N, K, 3) as x, y, score in one pixel space; areas (N,) in those pixels squared.
    Returns (N, N) with OKS_ij = mean over keypoints of exp(-d^2 / (2 sigma)^2 / (s + eps) / 2),
    where s = (area_i + area_j) / 2. With `vis_thr` None every keypoint counts (how HRNet's and
    MMPose's COCO evaluation call it); otherwise only keypoints whose score exceeds `vis_thr` in
    both poses count (MMPose's `vis_thr`), and a pair with no such keypoint gets OKS 0.
    """
    _check_poses("poses", poses)
    _check_vector("areas", areas, poses.shape[0])
    dtype = _float_dtype(poses, areas)
    poses, areas = poses.to(dtype), areas.to(dtype)
    vars_ = _sigma_vars(sigmas, poses.shape[1], poses)
    scale = (areas[:, None] + areas[None, :]) / 2
    if vis_thr is None:
        mask = torch.ones((1, 1, poses.shape[1]), dtype=torch.bool, device=poses.device)
    else:
        confident = poses[..., 2] > vis_thr  # (N, K)
        mask = confident[:, None] & confident[None, :]
    return _masked_oks(poses[..., :2], poses[..., :2], scale, mask, vars_)


def greedy_suppression(similarity: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Greedy NMS on a similarity matrix; returns who suppresses whom.

    similarity (N, N), scores (N,). Walking the poses in descending score order (ties: lower
    index first), a pose still alive is kept and suppresses every later alive pose j with
    similarity > threshold. Returns owner (N,) int64: owner[j] is the index of the kept pose
    that suppressed j, and owner[j] == j exactly when j is kept.

    The walk is N steps of device ops on boolean masks, with no host sync, so it can be
    queued on a GPU stream without waiting; N is a shape, not data.
    """
    n = scores.shape[0]
    if similarity.shape != (n, n):
        raise ValueError(
            f"similarity must have shape ({n}, {n}) to match scores; got {tuple(similarity.shape)}"
        )
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = similarity[order][:, order]
    # Only later poses can be suppressed; strict upper triangle keeps the diagonal and any
    # already-decided pose out of reach.
    over = torch.triu(ranked > threshold, diagonal=1)
    # Only the walk that decides who stays alive is sequential (two small ops a step; a pose's
    # fate is settled before its own step). Each suppressed pose's owner is then the first
    # surviving pose above it that covers it, found for all at once.
    alive = torch.ones(n, dtype=torch.bool, device=scores.device)
    for r in range(n):
        alive &= ~(over[r] & alive[r])
    owner_rank = torch.arange(n, device=scores.device)
    if n:
        covers = over & alive[:, None]
        first = covers.to(torch.uint8).argmax(0)  # the first maximum: the highest-ranked owner
        owner_rank = torch.where(covers.any(0), first, owner_rank)
    owner = torch.empty_like(owner_rank)
    owner[order] = order[owner_rank]
    return owner


def fuse_poses(poses: Tensor, weights: Tensor) -> Tensor:
    """Eq. (20): p*_m = sum_j w_mj p_j / sum_j w_mj.

    poses (N, K, D) in any pixel space (pass x, y only, or x, y and scores to average those
    too); weights (M, N) non-negative, each row with a positive sum (Soft-NMS puts weight 1
    on the pose itself). Returns (M, K, D). Equivalently Eq. (21): p*_m is the top-ranked pose
    plus the weighted mean of the offsets (p_j - p_m).
    """
    if poses.ndim != 3:
        raise ValueError(f"poses must have shape (N, K, D); got {tuple(poses.shape)}")
    if weights.ndim != 2 or weights.shape[1] != poses.shape[0]:
        raise ValueError(
            f"weights must have shape (M, {poses.shape[0]}); got {tuple(weights.shape)}"
        )
    weights = weights.to(poses.dtype)
    fused = torch.einsum("mn,nkd->mkd", weights, poses)
    return fused / weights.sum(1)[:, None, None]


def _check_nms_inputs(poses: Tensor, scores: Tensor, areas: Tensor) -> None:
    _check_poses("poses", poses)
    _check_vector("scores", scores, poses.shape[0])
    _check_vector("areas", areas, poses.shape[0])


def suppress_duplicates(
    poses: Tensor,
    scores: Tensor,
    areas: Tensor,
    threshold: float = 0.9,
    fuse: bool = True,
    groups: Tensor | None = None,
    valid: Tensor | None = None,
    sigmas: Sequence[float] | Tensor = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> tuple[Tensor, Tensor]:
    """OKS-NMS, or Soft-NMS fusion (Sec. 5.2, Eq. (20)-(21)) with `fuse`, as masks: no pose is
    dropped from the tensors, so the shapes stay fixed and nothing waits for the device.

    poses (N, K, 3) x, y, score; scores (N,); areas (N,) pixels squared; groups (N,) int, the
    frame of each pose (poses of different groups never suppress each other; None = one group);
    valid (N,) bool, the poses taking part (None = all). A pose is suppressed when its
    `nms_similarity` with a kept, higher-scored pose of its group exceeds `threshold`.

    Returns poses (N, K, 3), where each kept pose p_i is, with `fuse`, the OKS-weighted mean of
    the set Lambda_i it suppresses, itself included with weight 1 (Eq. 20), and every other pose
    is unchanged; and keep (N,) bool, the valid poses that survive. Only x, y are fused: Eq. (21)
    reads the fusion as a sub-pixel shift of the top-ranked pose, so its scores stay as they are.
    """
    _check_nms_inputs(poses, scores, areas)
    n = poses.shape[0]
    valid = torch.ones(n, dtype=torch.bool, device=poses.device) if valid is None else valid
    similarity = nms_similarity(poses, areas, sigmas, vis_thr)
    related = valid[:, None] & valid[None, :]
    if groups is not None:
        related = related & (groups[:, None] == groups[None, :])
    similarity = torch.where(related, similarity, torch.zeros_like(similarity))
    # Invalid poses rank last and, with no similarity to anyone, neither suppress nor are.
    ranking = torch.where(valid, scores.to(similarity.dtype), -torch.inf)
    owner = greedy_suppression(similarity, ranking, threshold)
    index = torch.arange(n, device=poses.device)
    keep = (owner == index) & valid
    if not fuse:
        return poses, keep
    # Lambda_i: the poses whose owner is i, weighted by their OKS to i; 1 for i itself (Eq. 20).
    members = owner[None, :] == index[:, None]  # (N, N)
    weights = torch.where(members, similarity, torch.zeros_like(similarity))
    weights = torch.where(index[:, None] == index[None, :], 1.0, weights)
    xy = fuse_poses(poses[..., :2].to(weights.dtype), weights)
    return torch.cat([xy.to(poses.dtype), poses[..., 2:]], dim=-1), keep


def oks_nms(
    poses: Tensor,
    scores: Tensor,
    areas: Tensor,
    threshold: float = 0.9,
    sigmas: Sequence[float] | Tensor = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> Tensor:
    """Greedy OKS-NMS, as HRNet / MMPose `oks_nms`.

    poses (N, K, 3) as x, y, score in one pixel space; scores (N,) instance scores; areas (N,)
    in pixels squared. A pose is dropped when its `nms_similarity` with a kept, higher-scored
    pose exceeds `threshold`. Returns keep (M,) int64 indices into the N poses, in descending
    score order. Reading the kept count costs one device->host sync (`suppress_duplicates`
    gives the same answer as a mask, with none).
    """
    _, keep = suppress_duplicates(
        poses, scores, areas, threshold, False, None, None, sigmas, vis_thr
    )
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[keep[order]]


def soft_nms_fusion(
    poses: Tensor,
    scores: Tensor,
    areas: Tensor,
    threshold: float = 0.9,
    sigmas: Sequence[float] | Tensor = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Soft-NMS sub-pixel refinement, Sec. 5.2, Eq. (20)-(21), as `suppress_duplicates` with
    `fuse`, with the suppressed poses removed.

    poses (N, K, 3) as x, y, score; scores (N,); areas (N,), as for `oks_nms`. Returns
    fused_poses (M, K, 3), fused_scores (M,), keep (M,) in descending score order.
    """
    fused, kept = suppress_duplicates(
        poses, scores, areas, threshold, True, None, None, sigmas, vis_thr
    )
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = order[kept[order]]
    return fused[keep], scores[keep], keep


def rescore(box_scores: Tensor, keypoint_scores: Tensor, threshold: float = 0.2) -> Tensor:
    """HRNet's instance score: box_scores (N,) x the mean of keypoint_scores (N, K) above
    `threshold`, 0 where none is above it."""
    confident = keypoint_scores > threshold
    total = torch.where(confident, keypoint_scores, 0.0).sum(-1)
    count = confident.sum(-1)
    return box_scores * torch.where(count > 0, total / count.clamp(min=1), 0.0)
