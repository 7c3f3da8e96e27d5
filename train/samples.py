"""Top-down training samples: person crops and their heatmap targets, and stage mixing (Eq. (7)).

`TopDownDataset` turns `Instance`s (see `train.annotations`) into network inputs: the person's
region (`ccm.geometry.box_to_center_scale`) is perturbed (`train.augment`), cut out of the image
with cv2.warpAffine, and the keypoints go through exactly the same matrix, then crop -> heatmap
and into Gaussian targets (`PoseConfig.codec()`, so targets and decoding share one convention).

Augmentation draws from a generator seeded by (seed, epoch, index): a resumed run sees the same
samples, and DataLoader workers never repeat each other. The epoch lives in shared memory, so
`set_epoch` reaches persistent workers too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ccm.checkpoint import PoseConfig
from ccm.geometry import box_to_center_scale
from ccm.skeleton import flip_permutation
from train.annotations import (
    Instance,
)
from train.augment import AugmentConfig, CropTransform, color_jitter, crop_matrix, sample_transform

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32) * 255
IMAGENET_STD = np.array((0.229, 0.224, 0.225), dtype=np.float32) * 255

# Eq. (7): the letters of a training stage and the loader of each source.
STAGE_LETTERS = {
    "A": "AIC training set (load_aic)",
    "C": "COCO training set (load_coco)",
    "H": "hard-negative detections (load_negatives)",
    "U": "pseudo-labelled unlabeled images (load_pseudo_labels)",
}


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file -> (H, W, 3) uint8 BGR, as stored (EXIF orientation ignored, like
    the COCO annotations). FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"could not decode image {path}")
    return image


class TopDownDataset(Dataset):
    """Instances -> crops and targets for a pose network with `config.input_size` (H, W).

    Without `augment` each crop is the instance box grown to the input aspect ratio and padded
    (evaluation); with it, the region is perturbed per `AugmentConfig`.

    A sample is a dict of tensors:
      image (3, H, W) float32, ImageNet-normalised RGB crop;
      heatmaps (K, h, w) float32 targets and weights (K,) float32 (0 for unlabelled joints and
      joints outside the crop; all-zero maps with weight 1 for hard negatives);
      keypoints (K, 3) float32 x, y in crop pixels and visibility (all 0 where the weight is 0);
      center (2,), scale (2,) float32 image pixels and rotation () float32 degrees: the region
      (ccm.geometry.grid_to_image_matrix reads them); flip () bool: the crop is mirrored, so a
      crop point x maps to the region's W - 1 - x and channels are swapped by flip_permutation;
      image_id () int64, score () float32, index () int64.
    """

    def __init__(
        self,
        instances: list[Instance],
        config: PoseConfig,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.instances = list(instances)
        self.config = config
        self.augment = augment
        self.seed = seed
        self.codec = config.codec()
        self.flip_perm = flip_permutation(config.num_keypoints)
        # Shared memory: DataLoader workers (forked or spawned, persistent or not) read this.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        bad = [i for i in self.instances if i.keypoints.shape[0] != config.num_keypoints]
        if bad:
            raise ValueError(
                f"{len(bad)} instances have {bad[0].keypoints.shape[0]} keypoints, the model "
                f"{config.num_keypoints} (first: {bad[0].image_path})"
            )

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation of this epoch; call before iterating the DataLoader."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.instances)

    def transform(self, index: int) -> CropTransform:
        """The crop of sample `index` in the current epoch (no image is read)."""
        inst = self.instances[index]
        h, w = self.config.input_size
        center, scale = box_to_center_scale(torch.tensor([inst.box], dtype=torch.float64), w / h)
        center, scale = center[0].numpy(), scale[0].numpy()
        if self.augment is None:
            return CropTransform(
                (float(center[0]), float(center[1])), (float(scale[0]), float(scale[1]))
            )
        return sample_transform(
            center, scale, inst.keypoints, w / h, self.augment, self._rng(index, 0)
        )

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, stream])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} instances")
        index = index % len(self)
        inst = self.instances[index]
        h, w = self.config.input_size
        crop = self.transform(index)
        matrix = crop_matrix(crop, (h, w))

        image = cv2.warpAffine(
            read_image(inst.image_path), matrix, (w, h), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )  # fmt: skip
        image = image[..., ::-1]  # BGR -> RGB
        if self.augment is not None and self.augment.color_jitter > 0:
            image = color_jitter(image, self.augment.color_jitter, self._rng(index, 1))
        image = (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD

        keypoints = inst.keypoints.astype(np.float64).copy()
        keypoints[:, :2] = keypoints[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        inside = (
            (keypoints[:, 0] >= -0.5) & (keypoints[:, 0] <= w - 0.5)
            & (keypoints[:, 1] >= -0.5) & (keypoints[:, 1] <= h - 0.5)
        )  # fmt: skip
        keypoints[:, 2] = np.where(inside & (keypoints[:, 2] > 0), keypoints[:, 2], 0.0)
        if crop.flip:
            keypoints = keypoints[self.flip_perm]
        heatmaps, weights = self.codec.encode(torch.from_numpy(keypoints)[None])
        heatmaps, weights = heatmaps[0], weights[0]
        if inst.source == "negative":
            # HNDM (Sec. 4.1): a false detection should light up nothing, so every joint counts.
            heatmaps, weights = torch.zeros_like(heatmaps), torch.ones_like(weights)
        keypoints[:, 2] *= weights.numpy()
        keypoints[keypoints[:, 2] == 0, :2] = 0.0

        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "heatmaps": heatmaps.float(),
            "weights": weights.float(),
            "keypoints": torch.from_numpy(keypoints).float(),
            "center": torch.tensor(crop.center, dtype=torch.float32),
            "scale": torch.tensor(crop.scale, dtype=torch.float32),
            "rotation": torch.tensor(crop.rotation, dtype=torch.float32),
            "flip": torch.tensor(crop.flip),
            "image_id": torch.tensor(inst.image_id, dtype=torch.int64),
            "score": torch.tensor(inst.score, dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def build_stage_dataset(
    sources: dict[str, list[Instance]],
    letters: str,
    config: PoseConfig,
    augment: AugmentConfig | None,
    seed: int = 0,
) -> TopDownDataset:
    """One training stage of Eq. (7): the union of the sources its letters name.

    sources maps "A" (AIC), "C" (COCO), "H" (hard negatives) and "U" (pseudo-labelled unlabeled
    images) to instances; letters such as "ACHU" or "CH" pick which of them to train on.
    """
    unknown = sorted(set(letters) - set(STAGE_LETTERS))
    if not letters or unknown or len(set(letters)) != len(letters):
        raise ValueError(
            f"stage letters must be distinct letters from {''.join(STAGE_LETTERS)}, got {letters!r}"
        )
    missing = [c for c in letters if c not in sources]
    if missing:
        raise ValueError(
            f"stage {letters!r} needs sources {missing}: "
            + "; ".join(f"{c} = {STAGE_LETTERS[c]}" for c in missing)
        )
    empty = [c for c in letters if not sources[c]]
    if empty:
        raise ValueError(f"stage {letters!r}: sources {empty} have no instances")
    instances = [inst for c in letters for inst in sources[c]]
    log.info(
        "stage %s: %d instances (%s)", letters, len(instances),
        ", ".join(f"{c} {len(sources[c])}" for c in letters),
    )  # fmt: skip
    return TopDownDataset(instances, config, augment, seed)
