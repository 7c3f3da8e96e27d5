"""Person instances from every data source of the CCM paper, as one record type.

Each loader reads one annotation format and returns `Instance`s: a person box and its 17 COCO
keypoints in image pixels (pixel (row i, column j) centred at (x=j, y=i), see `ccm.geometry`).

- `load_coco`: COCO person_keypoints json (the "C" of Eq. (7)).
- `load_aic`: AI Challenger json, its 12 limb joints mapped to COCO (Sec. 4.3, "A").
- `load_pseudo_labels`: COCO-format json of pseudo-labelled unlabeled images (Sec. 4.2, "U").
- `load_negatives`: COCO detection-format json of mined hard negatives (Sec. 4.1, "H");
  `train.mine_negatives` picks them from a detector's output.
- `load_detections`: detector boxes to evaluate on.

Images are not opened here; a missing file is reported when a sample is read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccm.skeleton import AIC_KEYPOINTS, AIC_TO_COCO, AIC_TO_COCO_VISIBILITY, COCO_KEYPOINTS

log = logging.getLogger(__name__)

NUM_KEYPOINTS = len(COCO_KEYPOINTS)
PERSON_CATEGORY = 1
SOURCES = ("coco", "aic", "unlabeled", "negative", "detection")
# AIC names its images by hash strings; instances get integer ids from here up, in file order,
# far above COCO's and the synthetic data's ids.
AIC_IMAGE_ID_OFFSET = 10**12


@dataclass(frozen=True, eq=False)
class Instance:
    """One person crop to train or evaluate on.

    box: x1, y1, x2, y2 in image pixels. keypoints: (17, 3) x, y, v in image pixels with COCO
    visibility (0 unlabelled, 1 occluded, 2 visible); all zeros for boxes without labels.
    score: detector score for detected boxes, 1 for ground truth. A hard negative (source
    "negative", HNDM Sec. 4.1) trains towards all-zero heatmaps with full weight.
    """

    image_path: Path
    image_id: int
    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    score: float = 1.0
    source: str = "coco"

    def __post_init__(self) -> None:
        if self.keypoints.ndim != 2 or self.keypoints.shape[1] != 3:
            raise ValueError(f"keypoints must be (K, 3) x, y, v, got {self.keypoints.shape}")
        if len(self.box) != 4:
            raise ValueError(f"box must be x1, y1, x2, y2, got {self.box}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose from {SOURCES}")


def read_json(path: str | Path):
    """Parsed JSON of a file; FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


def _coco_images(data, path: Path) -> list[dict]:
    """The `images` entries of a COCO json, or the json itself when it is a list of them."""
    images = data.get("images") if isinstance(data, dict) else data
    if not isinstance(images, list):
        raise ValueError(f"{path} has no COCO `images` list")
    return images


def image_index(ann_file: str | Path, image_dir: str | Path) -> dict[int, Path]:
    """image_id -> image path from a COCO json's `images` (or a bare list of `images` entries)."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    try:
        return {
            int(im["id"]): image_dir / im["file_name"]
            for im in _coco_images(read_json(ann_file), ann_file)
        }
    except (KeyError, TypeError) as err:
        raise ValueError(f"{ann_file}: an `images` entry lacks id or file_name ({err})") from err


def _xywh_to_box(bbox, width: float | None = None, height: float | None = None):
    """COCO [x, y, w, h] -> (x1, y1, x2, y2), clipped to the image extent [-0.5, size - 0.5]
    when the size is known (HRNet clips the same way); None when nothing of it is left."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1, x2, y2 = x, y, x + w, y + h
    if width is not None and height is not None:
        x1, y1 = max(x1, -0.5), max(y1, -0.5)
        x2, y2 = min(x2, width - 0.5), min(y2, height - 0.5)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _keypoint_array(flat, path: Path, what: str) -> np.ndarray:
    kpts = np.asarray(flat, dtype=np.float64)
    if kpts.size != 3 * NUM_KEYPOINTS:
        raise ValueError(
            f"{path}: {what} has {kpts.size} keypoint values, expected {3 * NUM_KEYPOINTS}"
        )
    return kpts.reshape(NUM_KEYPOINTS, 3)


def _load_coco_format(ann_file, image_dir, source: str, min_keypoints: int) -> list[Instance]:
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data = read_json(ann_file)
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{ann_file} is not a COCO keypoints json (no `annotations`)")
    images = {int(im["id"]): im for im in _coco_images(data, ann_file)}
    instances, skipped = [], 0
    for ann in data["annotations"]:
        if ann.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY or ann.get("iscrowd", 0):
            skipped += 1
            continue
        image = images.get(int(ann["image_id"]))
        if image is None:
            raise ValueError(
                f"{ann_file}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}"
            )
        box = _xywh_to_box(ann["bbox"], image.get("width"), image.get("height"))
        keypoints = _keypoint_array(ann["keypoints"], ann_file, f"annotation {ann.get('id')}")
        if box is None or (keypoints[:, 2] > 0).sum() < min_keypoints:
            skipped += 1
            continue
        instances.append(
            Instance(
                image_dir / image["file_name"],
                int(image["id"]),
                box,
                keypoints,
                float(ann.get("score", 1.0)),
                source,
            )  # fmt: skip
        )
    log.info("%s: %d %s instances, %d skipped", ann_file, len(instances), source, skipped)
    return instances


def load_coco(
    ann_file: str | Path, image_dir: str | Path, min_keypoints: int = 1
) -> list[Instance]:
    """COCO person_keypoints json -> instances; crowd regions, boxes of zero size (after clipping
    to the image) and persons with fewer than `min_keypoints` labelled keypoints are skipped."""
    return _load_coco_format(ann_file, image_dir, "coco", min_keypoints)


def load_pseudo_labels(
    ann_file: str | Path, image_dir: str | Path, min_keypoints: int = 1
) -> list[Instance]:
    """Pseudo-labelled unlabeled images (Sec. 4.2), COCO keypoints format: confident keypoints
    carry v > 0, the rest v = 0 (unlabelled, weight 0). An annotation's `score`, if present, is
    kept as the instance score. Source "unlabeled"."""
    return _load_coco_format(ann_file, image_dir, "unlabeled", min_keypoints)


def aic_to_coco(aic_keypoints) -> np.ndarray:
    """AIC keypoints (14, 3) x, y, v (1 visible, 2 occluded, 3 unlabelled) -> COCO (17, 3).

    Sec. 4.3: the 12 limb joints keep their coordinates with COCO's visibility codes; head top
    and neck are dropped; COCO's five face points stay unlabelled (all zeros).
    """
    aic = np.asarray(aic_keypoints, dtype=np.float64).reshape(-1, 3)
    if aic.shape[0] != len(AIC_KEYPOINTS):
        raise ValueError(f"AIC keypoints must have {len(AIC_KEYPOINTS)} joints, got {aic.shape[0]}")
    codes = set(aic[:, 2].astype(int).tolist()) - set(AIC_TO_COCO_VISIBILITY)
    if codes or not np.all(aic[:, 2] == np.round(aic[:, 2])):
        raise ValueError(f"AIC visibility codes must be 1, 2 or 3, got {aic[:, 2].tolist()}")
    coco = np.zeros((NUM_KEYPOINTS, 3))
    for a, c in AIC_TO_COCO:
        v = AIC_TO_COCO_VISIBILITY[int(aic[a, 2])]
        coco[c] = (aic[a, 0], aic[a, 1], v) if v else (0.0, 0.0, 0.0)
    return coco


def load_aic(ann_file: str | Path, image_dir: str | Path, min_keypoints: int = 1) -> list[Instance]:
    """AI Challenger keypoint json -> instances with COCO keypoints (see `aic_to_coco`).

    The file is a list of {"image_id", "keypoint_annotations": {human: [x, y, v] * 14},
    "human_annotations": {human: [x1, y1, x2, y2]}}; images are `image_dir/<image_id>.jpg`.
    Integer ids are AIC_IMAGE_ID_OFFSET + the entry's position in the file.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data = read_json(ann_file)
    if not isinstance(data, list):
        raise ValueError(f"{ann_file} is not an AI Challenger keypoint json (expected a list)")
    instances, skipped = [], 0
    for position, entry in enumerate(data):
        try:
            name, keypoints, boxes = (
                entry["image_id"],
                entry["keypoint_annotations"],
                entry["human_annotations"],
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"{ann_file}: entry {position} lacks {err}") from err
        for human, aic in keypoints.items():
            if human not in boxes:
                raise ValueError(f"{ann_file}: {name} {human} has keypoints but no box")
            x1, y1, x2, y2 = (float(v) for v in boxes[human])
            coco = aic_to_coco(aic)
            if x2 <= x1 or y2 <= y1 or (coco[:, 2] > 0).sum() < min_keypoints:
                skipped += 1
                continue
            instances.append(
                Instance(
                    image_dir / f"{name}.jpg",
                    AIC_IMAGE_ID_OFFSET + position,
                    (x1, y1, x2, y2),
                    coco,
                    1.0,
                    "aic",
                )
            )
    log.info("%s: %d aic instances, %d skipped", ann_file, len(instances), skipped)
    return instances


def _detection_records(det_file: str | Path) -> tuple[Path, list[dict]]:
    det_file = Path(det_file)
    data = read_json(det_file)
    if not isinstance(data, list):
        raise ValueError(f"{det_file} is not a COCO detection results json (expected a list)")
    return det_file, [d for d in data if d.get("category_id", PERSON_CATEGORY) == PERSON_CATEGORY]


def _box_instances(
    det_file, image_index: dict[int, Path], source: str, min_score: float
) -> list[Instance]:
    det_file, records = _detection_records(det_file)
    instances = []
    for det in records:
        image_id = int(det["image_id"])
        if image_id not in image_index:
            raise ValueError(
                f"{det_file}: detection on image {image_id}, which the image index lacks"
            )
        score = float(det.get("score", 1.0))
        box = _xywh_to_box(det["bbox"])
        if box is None or score < min_score:
            continue
        instances.append(
            Instance(
                image_index[image_id], image_id, box, np.zeros((NUM_KEYPOINTS, 3)), score, source
            )
        )
    log.info("%s: %d %s boxes of %d", det_file, len(instances), source, len(records))
    return instances


def load_negatives(det_file: str | Path, image_index: dict[int, Path]) -> list[Instance]:
    """Mined hard-negative boxes (Sec. 4.1), COCO detection format -> instances of source
    "negative" (no keypoints; trained towards all-zero heatmaps)."""
    return _box_instances(det_file, image_index, "negative", min_score=-np.inf)


def load_detections(
    det_file: str | Path, image_index: dict[int, Path], min_score: float = 0.0
) -> list[Instance]:
    """A person detector's boxes (COCO detection results format) with score >= min_score ->
    instances of source "detection", to run the pose model on for evaluation."""
    return _box_instances(det_file, image_index, "detection", min_score)
