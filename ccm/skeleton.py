"""Keypoint sets as data: COCO-17 names, flip pairs, limbs, OKS sigmas, the AI Challenger map."""

from __future__ import annotations

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

# Left/right pairs swapped when an image is mirrored.
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)  # fmt: skip

# COCO's `skeleton` field, 0-based.
COCO_LIMBS: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip

# Limb colours (RGB): green for the left side, orange for the right, blue for the centre line.
_LEFT, _RIGHT, _CENTRE = (0, 255, 0), (255, 128, 0), (51, 153, 255)
COCO_LIMB_COLORS: tuple[tuple[int, int, int], ...] = (
    _LEFT, _LEFT, _RIGHT, _RIGHT, _CENTRE, _CENTRE, _CENTRE, _CENTRE, _LEFT,
    _RIGHT, _LEFT, _RIGHT, _CENTRE, _CENTRE, _CENTRE, _CENTRE, _CENTRE, _CENTRE, _CENTRE,
)  # fmt: skip
COCO_KEYPOINT_COLORS: tuple[tuple[int, int, int], ...] = (_CENTRE,) * 5 + tuple(
    _LEFT if i % 2 else _RIGHT for i in range(5, 17)
)

# pycocotools' per-keypoint OKS constants (COCOeval.Params.kpt_oks_sigmas).
COCO_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

AIC_KEYPOINTS: tuple[str, ...] = (
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "head_top", "neck",
)  # fmt: skip

# Sec. 4.3: the 12 limb joints AIC shares with COCO, as (AIC index, COCO index).
# Head top and neck have no COCO counterpart and are dropped; COCO's face points stay unlabelled.
AIC_TO_COCO: tuple[tuple[int, int], ...] = tuple(
    (i, COCO_KEYPOINTS.index(name)) for i, name in enumerate(AIC_KEYPOINTS[:12])
)

# AIC visibility 1 = visible, 2 = occluded, 3 = not labelled; COCO uses 2, 1, 0.
AIC_TO_COCO_VISIBILITY: dict[int, int] = {1: 2, 2: 1, 3: 0}


def flip_permutation(num_keypoints: int, flip_pairs=COCO_FLIP_PAIRS) -> list[int]:
    """Index list that maps each keypoint to its mirror partner (itself if unpaired)."""
    perm = list(range(num_keypoints))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm
