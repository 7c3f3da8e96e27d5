"""Top-down training augmentation: the HRNet / SimpleBaseline recipe in this project's geometry.

A sample's crop is a region (centre, size, rotation; `ccm.geometry`) plus an optional mirror of
the crop. `sample_transform` draws it (half-body region, scale, rotation, flip), `crop_matrix`
turns it into the one image -> crop matrix that warps both the pixels and the keypoints, and
`color_jitter` perturbs the crop's colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ccm.geometry import grid_to_image_matrix, invert_affine
from ccm.skeleton import COCO_KEYPOINTS

# HRNet's upper/lower split: hips, knees and ankles are the lower body.
LOWER_BODY = tuple(
    i for i, n in enumerate(COCO_KEYPOINTS) if n.split("_")[-1] in ("hip", "knee", "ankle")
)
UPPER_BODY = tuple(i for i in range(len(COCO_KEYPOINTS)) if i not in LOWER_BODY)


@dataclass(frozen=True)
class AugmentConfig:
    """Random crop perturbations (HRNet / SimpleBaseline defaults).

    scale_factor: region size times N(1, scale_factor) clipped to 1 +- scale_factor.
    rotation_factor: with probability rotation_prob, a turn of N(0, rotation_factor) degrees
    clipped to +-2 rotation_factor. flip_prob: mirror the crop and swap left/right joints.
    half_body_prob: crop only the upper or lower body of a person with more than
    half_body_min_joints labelled joints (HRNet's NUM_JOINTS_HALF_BODY), padded by
    half_body_padding. color_jitter: brightness, contrast and saturation factors drawn from
    1 +- color_jitter (0 = off).
    """

    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    half_body_padding: float = 1.5
    color_jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in [0, 1), got {self.scale_factor}")
        if self.rotation_factor < 0 or not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"need rotation_factor >= 0 and color_jitter in [0, 1), got {self}")
        for name in ("rotation_prob", "flip_prob", "half_body_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"{name} must be a probability in [0, 1], got {getattr(self, name)}"
                )
        if self.half_body_padding <= 0:
            raise ValueError(f"half_body_padding must be positive, got {self.half_body_padding}")


@dataclass(frozen=True)
class CropTransform:
    """Where a crop comes from: a region of the image (centre, size w, h in image pixels,
    counter-clockwise rotation in degrees, as `ccm.geometry.grid_to_image_matrix` reads them),
    then mirrored left-right in the crop when `flip`."""

    center: tuple[float, float]
    scale: tuple[float, float]
    rotation: float = 0.0
    flip: bool = False


def half_body_region(
    keypoints: np.ndarray, aspect_ratio: float, padding: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """HRNet's half-body crop: the labelled joints of the upper body (with probability 1/2 when
    it has more than 2) or else the lower body (when it has more than 2), their mean as centre
    and their extent, grown to the aspect ratio and padded, as size. None with fewer than 2.
    keypoints (17, 3) in image pixels; returns centre (2,) and size (2,) in image pixels."""
    labelled = keypoints[:, 2] > 0
    upper = keypoints[[i for i in UPPER_BODY if labelled[i]], :2]
    lower = keypoints[[i for i in LOWER_BODY if labelled[i]], :2]
    if rng.random() < 0.5 and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    center = chosen.mean(axis=0)
    w, h = chosen.max(axis=0) - chosen.min(axis=0)
    w, h = max(w, h * aspect_ratio), max(h, w / aspect_ratio)
    if w <= 0:
        return None
    return center, np.array((w, h)) * padding


def sample_transform(
    center: np.ndarray,
    scale: np.ndarray,
    keypoints: np.ndarray,
    aspect_ratio: float,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> CropTransform:
    """Draw a crop around a region (centre, size in image pixels) of a person with keypoints
    (17, 3) in image pixels, in HRNet's order: half body, scale, rotation, flip."""
    if (
        keypoints[:, 2] > 0
    ).sum() > config.half_body_min_joints and rng.random() < config.half_body_prob:
        region = half_body_region(keypoints, aspect_ratio, config.half_body_padding, rng)
        if region is not None:
            center, scale = region
    sf, rf = config.scale_factor, config.rotation_factor
    scale = scale * np.clip(rng.normal() * sf + 1, 1 - sf, 1 + sf)
    rotation = (
        np.clip(rng.normal() * rf, -2 * rf, 2 * rf) if rng.random() < config.rotation_prob else 0.0
    )
    flip = bool(rng.random() < config.flip_prob)
    return CropTransform(
        (float(center[0]), float(center[1])),
        (float(scale[0]), float(scale[1])),
        float(rotation),
        flip,
    )


def crop_matrix(transform: CropTransform, size: tuple[int, int]) -> np.ndarray:
    """The (2, 3) float64 image -> crop map of a crop of `size` (H, W): the inverse of the
    region's grid -> image map, then the mirror x -> W - 1 - x when flipped. It is exactly the
    matrix cv2.warpAffine takes, so pixels and keypoints move together."""
    to_image = grid_to_image_matrix(
        torch.tensor([transform.center], dtype=torch.float64),
        torch.tensor([transform.scale], dtype=torch.float64),
        size,
        torch.tensor([transform.rotation], dtype=torch.float64),
    )
    matrix = invert_affine(to_image)[0].numpy()
    if transform.flip:
        mirror = np.array(((-1.0, 0.0, size[1] - 1.0), (0.0, 1.0, 0.0)))
        matrix = mirror[:, :2] @ matrix + np.concatenate((np.zeros((2, 2)), mirror[:, 2:]), axis=1)
    return matrix


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation factors from U(1 - s, 1 + s), as torchvision's
    ColorJitter applies them (in that order). image (H, W, 3) RGB in [0, 255] -> float32."""
    out = image.astype(np.float32)
    if strength <= 0:
        return out
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    out = np.clip(out * brightness, 0, 255)
    gray = out @ np.array((0.299, 0.587, 0.114), dtype=np.float32)
    out = np.clip((out - gray.mean()) * contrast + gray.mean(), 0, 255)
    gray = (out @ np.array((0.299, 0.587, 0.114), dtype=np.float32))[..., None]
    return np.clip((out - gray) * saturation + gray, 0, 255).astype(np.float32)
