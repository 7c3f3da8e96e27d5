"""The synthetic dataset on disk: COCO and AIC annotation files, detections, images and clips.

`generate_dataset` writes, under one root:

    images/{train,val,aic_train,unlabeled}/*.jpg
    annotations/person_keypoints_{train,val}.json   COCO keypoints format
    annotations/aic_train.json                      AI Challenger format (14 joints)
    annotations/unlabeled_images.json               list of COCO `images` entries
    detections/person_detections_{train,val}.json   COCO detection results (jittered + false)
    videos/walk_NNN.mp4 + walk_NNN.json             H.264 clips with per-frame ground truth
                                                    (MOTION_NNN for motions other than walk)

Everything is a function of the seed, so the same seed gives byte-identical JSON and identical
images (`train.synthetic.scenes`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ccm.poses import write_json
from ccm.skeleton import COCO_KEYPOINTS, COCO_LIMBS
from train.synthetic.figures import PARTS_PER_FIGURE
from train.synthetic.scenes import (
    SceneConfig,
    Split,
    annotated,
    image_rng,
    keypoint_list,
    render_image,
    rounded,
)
from train.synthetic.videos import VideoConfig, VideoPaths, generate_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything `generate_dataset` writes."""

    seed: int = 0
    num_train: int = 64
    num_val: int = 32
    num_aic: int = 32
    num_unlabeled: int = 32
    num_videos: int = 1
    jpeg_quality: int = 92
    scene: SceneConfig = field(default_factory=SceneConfig)
    video: VideoConfig = field(default_factory=VideoConfig)

    def __post_init__(self) -> None:
        counts = (self.num_train, self.num_val, self.num_aic, self.num_unlabeled, self.num_videos)
        if min(counts) < 0 or max(counts) >= 1_000_000:
            raise ValueError(f"image and video counts must be in [0, 1e6), got {counts}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass(frozen=True)
class DatasetPaths:
    """Where `generate_dataset` put each file."""

    root: Path
    train_images: Path
    val_images: Path
    train_annotations: Path
    val_annotations: Path
    aic_images: Path
    aic_annotations: Path
    unlabeled_images: Path
    unlabeled_list: Path
    train_detections: Path
    val_detections: Path
    videos: tuple[VideoPaths, ...]


def _iou(a, b) -> float:
    """IoU of two (x, y, w, h) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _clip_box(box, width: int, height: int) -> list[float]:
    x0, y0 = min(max(box[0], 0.0), width - 1.0), min(max(box[1], 0.0), height - 1.0)
    x1, y1 = min(max(box[0] + box[2], x0 + 1.0), width), min(max(box[1] + box[3], y0 + 1.0), height)
    return rounded((x0, y0, x1 - x0, y1 - y0))


def _detections(
    rng: np.random.Generator,
    image_id: int,
    gt: list[list[float]],
    distractors,
    width: int,
    height: int,
) -> list[dict]:
    """A detector's output: most true boxes jittered (IoU > 0.5) plus false boxes that touch no
    true box (IoU 0), often on person-sized props, with scores spread over (0, 1)."""
    dets = []
    for box in gt:
        if rng.random() < 0.05:  # a missed person
            continue
        found = box
        for attempt in range(8):
            spread = 0.08 * 0.5**attempt
            w, h = (
                box[2] * math.exp(rng.normal(0, spread)),
                box[3] * math.exp(rng.normal(0, spread)),
            )
            cx = box[0] + box[2] / 2 + rng.normal(0, spread) * box[2]
            cy = box[1] + box[3] / 2 + rng.normal(0, spread) * box[3]
            cand = _clip_box((cx - w / 2, cy - h / 2, w, h), width, height)
            if _iou(cand, box) > 0.55:
                found = cand
                break
        dets.append((found, float(np.clip(rng.normal(0.85, 0.1), 0.3, 0.999))))
    props = list(distractors)
    for _ in range(rng.poisson(1.2)):
        for _attempt in range(20):
            if props and rng.random() < 0.7:
                x, y, w, h = props.pop(int(rng.integers(len(props))))
                cand = (x + rng.normal(0, 0.05) * w, y + rng.normal(0, 0.05) * h, w, h)
            else:
                h = rng.uniform(0.15, 0.7) * height
                w = h * rng.uniform(0.3, 0.7)
                cand = (rng.uniform(0, max(width - w, 1.0)), rng.uniform(0, height - h), w, h)
            cand = _clip_box(cand, width, height)
            if all(_iou(cand, g) == 0.0 for g in gt):
                dets.append((cand, float(rng.uniform(0.05, 0.95))))
                break
    return [
        {"image_id": image_id, "category_id": 1, "bbox": b, "score": round(s, 4)} for b, s in dets
    ]


def _save_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {path}")


def _mask_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


COCO_CATEGORY = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(COCO_KEYPOINTS),
    "skeleton": [[a + 1, b + 1] for a, b in COCO_LIMBS],
}


def _write_coco_split(
    root: Path, split: Split, count: int, cfg: SyntheticConfig
) -> tuple[Path, Path, Path, int]:
    """Images, COCO keypoint annotations and detection results of one labelled split."""
    images, annotations, detections = [], [], []
    for index in range(count):
        scene = render_image(cfg.seed, split, index, cfg.scene)
        image_id = split.image_id(index)
        height, width = scene.image.shape[:2]
        file_name = f"{image_id:012d}.jpg"
        _save_jpeg(root / "images" / split.folder / file_name, scene.image, cfg.jpeg_quality)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        owner = scene.labels // PARTS_PER_FIGURE - 1
        boxes = []
        for k, person in enumerate(annotated(scene, cfg.scene)):
            box = rounded(person.bbox)
            boxes.append(box)
            annotations.append(
                {
                    "id": image_id * 100 + k + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": box,
                    "area": float(person.visible_area),
                    "segmentation": _mask_rle(owner == person.figure),
                    "num_keypoints": int((person.keypoints[:, 2] > 0).sum()),
                    "keypoints": keypoint_list(person.keypoints),
                }
            )
        detections += _detections(
            image_rng(cfg.seed, split, index, 1), image_id, boxes, scene.distractors, width, height
        )
        if (index + 1) % 32 == 0 or index + 1 == count:
            log.info("%s: %d/%d images", split.folder, index + 1, count)
    info = {"description": "ccm-pose synthetic figures", "version": "1.0", "seed": cfg.seed}
    if cfg.scene.max_distractors:  # not persons: drawn, never annotated
        info["max_distractors"] = cfg.scene.max_distractors
    coco = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [COCO_CATEGORY],
    }
    ann_path = root / "annotations" / f"person_keypoints_{split.folder}.json"
    det_path = root / "detections" / f"person_detections_{split.folder}.json"
    write_json(ann_path, coco)
    write_json(det_path, detections)
    return root / "images" / split.folder, ann_path, det_path, len(annotations)


def _write_aic(root: Path, cfg: SyntheticConfig) -> tuple[Path, Path]:
    """AI Challenger format: [{"image_id", "keypoint_annotations": {"human1": [x,y,v]*14},
    "human_annotations": {"human1": [x1,y1,x2,y2]}}], images named `<image_id>.jpg`."""
    entries = []
    for index in range(cfg.num_aic):
        scene = render_image(cfg.seed, Split.AIC_TRAIN, index, cfg.scene)
        image_id = f"aic_{index:06d}"
        _save_jpeg(
            root / "images" / Split.AIC_TRAIN.folder / f"{image_id}.jpg",
            scene.image,
            cfg.jpeg_quality,
        )
        people = annotated(scene, cfg.scene)
        entries.append(
            {
                "url": "",
                "image_id": image_id,
                "keypoint_annotations": {
                    f"human{k + 1}": keypoint_list(p.aic_keypoints) for k, p in enumerate(people)
                },
                "human_annotations": {
                    f"human{k + 1}": rounded((x, y, x + w, y + h))
                    for k, p in enumerate(people)
                    for x, y, w, h in [p.bbox]
                },
            }
        )
    path = root / "annotations" / "aic_train.json"
    write_json(path, entries)
    return root / "images" / Split.AIC_TRAIN.folder, path


def _write_unlabeled(root: Path, cfg: SyntheticConfig) -> tuple[Path, Path]:
    """Images without annotations and a JSON list of their COCO `images` entries."""
    images = []
    for index in range(cfg.num_unlabeled):
        scene = render_image(cfg.seed, Split.UNLABELED, index, cfg.scene)
        image_id = Split.UNLABELED.image_id(index)
        file_name = f"{image_id:012d}.jpg"
        _save_jpeg(
            root / "images" / Split.UNLABELED.folder / file_name, scene.image, cfg.jpeg_quality
        )
        height, width = scene.image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    path = root / "annotations" / "unlabeled_images.json"
    write_json(path, images)
    return root / "images" / Split.UNLABELED.folder, path


def generate_dataset(out: Path, config: SyntheticConfig | None = None) -> DatasetPaths:
    """Write every split, the detection files and the videos under `out` (see module doc)."""
    cfg = config or SyntheticConfig()
    out = Path(out)
    train_images, train_ann, train_det, n_train = _write_coco_split(
        out, Split.TRAIN, cfg.num_train, cfg
    )
    val_images, val_ann, val_det, n_val = _write_coco_split(out, Split.VAL, cfg.num_val, cfg)
    log.info("annotated %d train and %d val persons", n_train, n_val)
    aic_images, aic_ann = _write_aic(out, cfg)
    unlabeled_images, unlabeled_list = _write_unlabeled(out, cfg)
    videos = tuple(
        generate_video(out / "videos" / f"{cfg.video.motion}_{i:03d}.mp4", cfg.video, cfg.seed, i)
        for i in range(cfg.num_videos)
    )
    return DatasetPaths(
        out, train_images, val_images, train_ann, val_ann, aic_images, aic_ann,
        unlabeled_images, unlabeled_list, train_det, val_det, videos,
    )  # fmt: skip
