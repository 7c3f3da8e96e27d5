"""Synthetic COCO-keypoints data: scenes of articulated figures (see `train.figures`).

`generate_dataset` writes, under one root:

    images/{train,val,aic_train,unlabeled}/*.jpg
    annotations/person_keypoints_{train,val}.json   COCO keypoints format
    annotations/aic_train.json                      AI Challenger format (14 joints)
    annotations/unlabeled_images.json               list of COCO `images` entries
    detections/person_detections_{train,val}.json   COCO detection results (jittered + false)
    videos/walk_NNN.mp4 + walk_NNN.json             H.264 clips with per-frame ground truth
                                                    (MOTION_NNN for motions other than walk)

Everything is a function of the seed: each image draws from its own generator seeded by
(seed, split, index), so the same seed gives byte-identical JSON and identical images.
Coordinates are image pixels with pixel (row i, column j) centred at (x=j, y=i).

    python -m train.synthetic --out data/synthetic --train 64 --val 32
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path

import av
import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ccm.skeleton import AIC_KEYPOINTS, AIC_TO_COCO, COCO_KEYPOINTS, COCO_LIMBS
from train.figures import (
    HEAD_TOP,
    KEYPOINT_PARTS,
    NECK,
    PARTS_PER_FIGURE,
    Appearance,
    Canvas,
    Figure,
    FigurePoints,
    Proportions,
    draw_figure,
    figure_extent,
    project_figure,
    sample_appearance,
    sample_pose,
    sample_proportions,
    swinging_pose,
    walking_pose,
)

log = logging.getLogger(__name__)

# AIC's neck and head top have no COCO counterpart; they come from the skeleton directly.
_AIC_EXTRA = {AIC_KEYPOINTS.index("head_top"): HEAD_TOP, AIC_KEYPOINTS.index("neck"): NECK}
_COCO_V_TO_AIC = {2: 1, 1: 2, 0: 3}


class Split(IntEnum):
    """Image splits; the value seeds the split's generators and offsets its image ids."""

    TRAIN = 0
    VAL = 1
    AIC_TRAIN = 2
    UNLABELED = 3
    VIDEO = 4

    @property
    def folder(self) -> str:
        return self.name.lower()

    def image_id(self, index: int) -> int:
        return self.value * 1_000_000 + index + 1


@dataclass(frozen=True)
class SceneConfig:
    """Random still scenes. Sizes are (height, width) in pixels."""

    min_size: tuple[int, int] = (192, 256)
    max_size: tuple[int, int] = (480, 640)
    max_people: int = 4
    min_person_height: float = 28.0  # standing height in pixels
    max_person_height: float = 1.1  # as a fraction of image height; larger figures get cut off
    overlap_prob: float = 0.5  # chance a figure is placed next to an earlier one
    max_yaw_deg: float = 120.0
    min_visible_fraction: float = 0.15  # less of a figure showing and it stays unannotated

    def __post_init__(self) -> None:
        if min(self.min_size) < 16 or any(
            a > b for a, b in zip(self.min_size, self.max_size, strict=True)
        ):
            raise ValueError(f"image sizes need 16 <= min_size <= max_size, got {self}")
        if self.max_people < 0 or self.min_person_height < 8:
            raise ValueError(f"need max_people >= 0 and min_person_height >= 8, got {self}")


# Kinds of motion a clip can show (`VideoConfig.motion`, `sample_tracks`).
MOTIONS = ("walk", "swing", "turn", "enter")


@dataclass(frozen=True)
class VideoConfig:
    """A clip of moving figures. With num_people >= 2 the first two cross paths mid-clip.

    motion: "walk" (steady gait, 0.8 standing heights per second), "swing" (fast, wide arm and
    leg swings at 2 gait cycles per second), "turn" (slow walkers that spin about their vertical
    axis, half a turn per second or faster), "enter" (fast walkers that come in from one side
    of the frame and leave by the other, at staggered times).
    """

    width: int = 320
    height: int = 240
    fps: int = 25
    seconds: float = 2.0
    num_people: int = 2
    crf: int = 20
    motion: str = "walk"

    @property
    def num_frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 32:
            raise ValueError(
                f"H.264 needs an even video size >= 32, got {self.width}x{self.height}"
            )
        if self.fps <= 0 or self.seconds <= 0 or self.num_people < 0:
            raise ValueError(f"need fps > 0, seconds > 0, num_people >= 0, got {self}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {self.motion!r}")


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
class VideoPaths:
    video: Path
    ground_truth: Path


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


@dataclass(frozen=True, eq=False)
class PersonLabel:
    """Ground truth of one drawn figure.

    keypoints: (17, 3) COCO x, y (image pixels, 0.01 px grid) and v: 2 visible, 1 hidden behind
    something drawn in front of it, 0 outside the image (x = y = 0).
    aic_keypoints: (14, 3) the same in AIC order and codes (1 visible, 2 occluded, 3 unlabelled).
    bbox: (x, y, w, h) tight around the figure's visible pixels, or None when none show.
    """

    figure: int  # index into Scene.figures
    keypoints: np.ndarray
    aic_keypoints: np.ndarray
    bbox: tuple[float, float, float, float] | None
    visible_area: int
    full_area: int  # pixels the figure covers inside the image when nothing is in front of it


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered image: RGB (H, W, 3) uint8, part labels (H, W), and one label per figure."""

    image: np.ndarray
    labels: np.ndarray
    figures: tuple[Figure, ...]
    people: tuple[PersonLabel, ...]
    distractors: tuple[tuple[float, float, float, float], ...]  # x, y, w, h of clutter props


def image_rng(seed: int, split: Split, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one image (stream 0) or of its detections (stream 1)."""
    return np.random.default_rng([seed, int(split), index, stream])


# ----------------------------------------------------------------------------- backgrounds


def make_background(rng: np.random.Generator, height: int, width: int):
    """Wall and floor with smooth texture, patterns and clutter; (H, W, 3) float32 RGB.

    Also returns the boxes (x, y, w, h) of person-sized props (poles, lamps, coat stands) that a
    detector may mistake for people: places for hard-negative detections.
    """
    horizon = rng.uniform(0.25, 0.8) * height
    # Muted wall and floor colours: grey plus a random amount of a random hue.
    wall, floor = (
        (g := rng.uniform(40, 220)) + rng.uniform(0.2, 0.7) * (rng.uniform(30, 230, 3) - g)
        for _ in range(2)
    )
    ys = np.arange(height, dtype=np.float32)[:, None, None]
    img = np.where(ys < horizon, wall, floor) * (1.0 + rng.uniform(-0.25, 0.25) * ys / height)
    img = np.broadcast_to(img, (height, width, 3)).astype(np.float32)
    grid = (int(rng.integers(3, 9)), int(rng.integers(3, 9)))
    coarse = rng.normal(0, 1, (*grid, 3)) * rng.uniform(0, 10)  # mostly brightness, some colour
    coarse = (coarse + rng.normal(0, 1, (*grid, 1)) * rng.uniform(5, 30)).astype(np.float32)
    img = img + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    xs = np.arange(width, dtype=np.float32)[None, :, None]
    if rng.random() < 0.4:  # wallpaper stripes
        period = rng.uniform(6, 40)
        img = img + rng.uniform(6, 25) * np.sin(2 * math.pi * xs / period) * (ys < horizon)
    if rng.random() < 0.3:  # checkered floor
        cell = rng.uniform(10, 50)
        check = ((xs // cell + ys // cell) % 2) * (ys >= horizon)
        img = img + rng.uniform(10, 40) * (check - 0.5)
    img = np.ascontiguousarray(img)
    aa = cv2.LINE_AA
    for _ in range(rng.integers(2, 10)):  # boxes, windows, balls, cables
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        size = int(rng.uniform(0.05, 0.35) * min(height, width))
        kind = rng.integers(3)
        if kind == 0:
            corner = (x + size, y + int(size * rng.uniform(0.3, 2)))
            cv2.rectangle(img, (x, y), corner, colour, -1)
        elif kind == 1:
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(img, (x, y), (size // 2, size // 3), angle, 0, 360, colour, -1, aa)
        else:
            end = (int(x + rng.normal(0, size * 2)), int(y + rng.normal(0, size * 2)))
            cv2.line(img, (x, y), end, colour, int(rng.integers(1, 6)), aa)
    distractors = []
    for _ in range(rng.integers(0, 3)):  # person-sized lamps: a ball on a pole on a foot
        h = rng.uniform(0.25, 0.8) * height
        w = h * rng.uniform(0.15, 0.4)
        x, y = rng.uniform(0, width - w), rng.uniform(0, max(height - h, 1))
        pole, top = (tuple(float(c) for c in rng.uniform(20, 235, 3)) for _ in range(2))
        head, foot = (int(x + w / 2), int(y + w / 2)), (int(x + w / 2), int(y + h))
        cv2.line(img, head, foot, pole, max(2, int(w * 0.18)), aa)
        cv2.ellipse(img, foot, (int(w / 2), max(1, int(w / 8))), 0, 0, 360, pole, -1, aa)
        cv2.circle(img, head, max(2, int(w / 2)), top, -1, aa)
        distractors.append((float(x), float(y), float(w), float(h)))
    return img, tuple(distractors)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera look: exposure, slight blur, sensor noise; (H, W, 3) uint8."""
    img = image * rng.uniform(0.8, 1.15) + rng.uniform(-15, 15)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.9))
    img = img + rng.normal(0, rng.uniform(0, 5), img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- scenes


def _sample_figures(
    rng: np.random.Generator, height: int, width: int, cfg: SceneConfig
) -> list[Figure]:
    """0..max_people figures; later ones stand nearer and are drawn in front.

    Few images (8%) are empty: they teach a detector little and a pose network nothing.
    """
    empty = cfg.max_people == 0 or rng.random() < 0.08
    count = 0 if empty else int(rng.integers(1, cfg.max_people + 1))
    lo = math.log(min(cfg.min_person_height, cfg.max_person_height * height))
    hi = math.log(cfg.max_person_height * height)
    figures: list[Figure] = []
    for size in sorted(math.exp(rng.uniform(lo, hi)) for _ in range(count)):
        pose, props = sample_pose(rng, cfg.max_yaw_deg), sample_proportions(rng)
        fig = Figure(pose, props, sample_appearance(rng), size, (0.0, 0.0))
        x0, y0, x1, y1 = figure_extent(fig)
        if figures and rng.random() < cfg.overlap_prob:  # beside, partly in front of, someone
            ox0, oy0, ox1, oy1 = figure_extent(figures[rng.integers(len(figures))])
            gap = rng.choice((-1, 1)) * rng.uniform(0.15, 0.6) * (ox1 - ox0 + x1 - x0)
            cx = 0.5 * (ox0 + ox1) + gap
            cy = oy1 - 0.5 * (y1 - y0) + rng.uniform(-0.1, 0.2) * (y1 - y0)
        else:
            cx, cy = rng.uniform(-0.05, 1.05) * width, rng.uniform(0.15, 0.85) * height
        shift = (cx - 0.5 * (x0 + x1), cy - 0.5 * (y0 + y1))
        figures.append(replace(fig, pelvis=shift))
    return figures


def render_scene(
    background: np.ndarray,
    figures: list[Figure],
    rng: np.random.Generator | None = None,
    distractors=(),
) -> Scene:
    """Paint figures over a (H, W, 3) float background in order (back to front) and label them.

    A keypoint inside the image is visible (v=2) when the topmost paint at its pixel belongs to
    a part of the same figure that the keypoint sits on, otherwise occluded (v=1); outside the
    image it is unlabelled (v=0). `rng` adds the camera look; None keeps the paint as is.
    """
    canvas = Canvas(background)
    height, width = background.shape[:2]
    projected: list[FigurePoints] = []
    full_areas: list[int] = []
    for i, fig in enumerate(figures):
        pts = project_figure(fig)
        draw_figure(canvas, fig, pts, i)
        projected.append(pts)
        full_areas.append(int(canvas.drawn.sum()))
    owner = canvas.labels // PARTS_PER_FIGURE - 1
    people = tuple(
        _label_person(canvas.labels, owner == i, pts, i, full_areas[i], width, height)
        for i, pts in enumerate(projected)
    )
    if rng is not None:
        image = _finish(canvas.image, rng)
    else:
        image = np.clip(np.rint(canvas.image), 0, 255).astype(np.uint8)
    return Scene(image, canvas.labels, tuple(figures), people, tuple(distractors))


def _label_person(
    labels, mask, pts: FigurePoints, index: int, full_area: int, width: int, height: int
) -> PersonLabel:
    xy = np.round(pts.xyd[:, :2], 2)
    base = (index + 1) * PARTS_PER_FIGURE
    vis = np.zeros(len(KEYPOINT_PARTS), np.int64)
    for k, parts in enumerate(KEYPOINT_PARTS):
        x, y = xy[k]
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            continue
        top = int(labels[int(math.floor(y + 0.5)), int(math.floor(x + 0.5))])
        seen = top - base in parts and (k >= 5 or bool(pts.face_toward[k]))
        vis[k] = 2 if seen else 1
    keypoints = np.concatenate([xy[:17], vis[:17, None]], 1)
    keypoints[vis[:17] == 0, :2] = 0.0
    aic = np.zeros((len(AIC_KEYPOINTS), 3))
    for a, c in AIC_TO_COCO:
        aic[a] = (*keypoints[c, :2], _COCO_V_TO_AIC[int(vis[c])])
    for a, point in _AIC_EXTRA.items():
        v = int(vis[17 + (point - HEAD_TOP)])
        aic[a] = (*(xy[point] if v else (0.0, 0.0)), _COCO_V_TO_AIC[v])
    area = int(mask.sum())
    bbox = None
    if area:
        cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
        # Pixel j spans [j - 0.5, j + 0.5]; clipped to the image. Contains every v=2 keypoint.
        x0, y0 = max(cols[0] - 0.5, 0.0), max(rows[0] - 0.5, 0.0)
        x1, y1 = min(cols[-1] + 0.5, float(width)), min(rows[-1] + 0.5, float(height))
        bbox = (x0, y0, x1 - x0, y1 - y0)
    return PersonLabel(index, keypoints, aic, bbox, area, full_area)


def render_image(seed: int, split: Split, index: int, config: SceneConfig | None = None) -> Scene:
    """Image `index` of `split`, exactly as `generate_dataset` draws it."""
    config = config or SceneConfig()
    rng = image_rng(seed, split, index)
    height = int(rng.integers(config.min_size[0], config.max_size[0] + 1))
    width = int(rng.integers(config.min_size[1], config.max_size[1] + 1))
    background, distractors = make_background(rng, height, width)
    figures = _sample_figures(rng, height, width, config)
    return render_scene(background, figures, rng, distractors)


def annotated(scene: Scene, config: SceneConfig) -> list[PersonLabel]:
    """Figures that show enough of themselves to be annotated."""
    return [
        p
        for p in scene.people
        if p.bbox is not None
        and p.visible_area >= max(4, config.min_visible_fraction * p.full_area)
    ]


# ----------------------------------------------------------------------------- files


def _keypoint_list(kpts: np.ndarray) -> list[float | int]:
    return [v for x, y, c in kpts.tolist() for v in (round(x, 2), round(y, 2), int(c))]


def _rounded(box) -> list[float]:
    return [round(float(v), 2) for v in box]


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
    return _rounded((x0, y0, x1 - x0, y1 - y0))


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


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")))


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
            box = _rounded(person.bbox)
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
                    "keypoints": _keypoint_list(person.keypoints),
                }
            )
        detections += _detections(
            image_rng(cfg.seed, split, index, 1), image_id, boxes, scene.distractors, width, height
        )
        if (index + 1) % 32 == 0 or index + 1 == count:
            log.info("%s: %d/%d images", split.folder, index + 1, count)
    info = {"description": "ccm-pose synthetic figures", "version": "1.0", "seed": cfg.seed}
    coco = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [COCO_CATEGORY],
    }
    ann_path = root / "annotations" / f"person_keypoints_{split.folder}.json"
    det_path = root / "detections" / f"person_detections_{split.folder}.json"
    _write_json(ann_path, coco)
    _write_json(det_path, detections)
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
                    f"human{k + 1}": _keypoint_list(p.aic_keypoints) for k, p in enumerate(people)
                },
                "human_annotations": {
                    f"human{k + 1}": _rounded((x, y, x + w, y + h))
                    for k, p in enumerate(people)
                    for x, y, w, h in [p.bbox]
                },
            }
        )
    path = root / "annotations" / "aic_train.json"
    _write_json(path, entries)
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
    _write_json(path, images)
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


# ----------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class Track:
    """A figure moving in a straight line: its hip midpoint is start + frame * velocity (px).

    Its facing is yaw + frame * yaw_rate. The gait advances by phase_rate radians per frame, or,
    when that is None, by one cycle per 0.8 standing heights walked (the feet barely slide).
    """

    track_id: int
    start: tuple[float, float]
    velocity: tuple[float, float]  # pixels per frame
    height: float  # standing height in pixels
    yaw: float
    phase: float  # gait phase at frame 0 (radians)
    proportions: Proportions
    appearance: Appearance
    yaw_rate: float = 0.0  # radians per frame
    phase_rate: float | None = None  # radians per frame
    swing: bool = False  # `swinging_pose` instead of `walking_pose`

    def at(self, frame: int) -> Figure:
        """The figure in `frame`."""
        x, y = self.start[0] + frame * self.velocity[0], self.start[1] + frame * self.velocity[1]
        if self.phase_rate is None:
            step = 2 * math.pi * math.hypot(*self.velocity) / (0.8 * self.height)
            phase = self.phase + frame * step
        else:
            phase = self.phase + frame * self.phase_rate
        yaw = self.yaw + frame * self.yaw_rate
        pose = (swinging_pose if self.swing else walking_pose)(phase, yaw)
        return Figure(pose, self.proportions, self.appearance, self.height, (x, y))


def sample_tracks(rng: np.random.Generator, cfg: VideoConfig) -> list[Track]:
    """The clip's figures, by `cfg.motion` (see `VideoConfig`); tracks 0 and 1 meet mid-clip.

    "walk" draws exactly the walkers it always did for a seed, so older clips regenerate as they
    were; the other motions draw their extra parameters after those.
    """
    width, height, n = cfg.width, cfg.height, cfg.num_frames
    tracks = []
    for tid in range(cfg.num_people):
        crossing = tid < 2
        feet = 0.86 + 0.04 * tid if crossing else rng.uniform(0.6, 0.98)
        size = (0.62 + 0.04 * tid if crossing else 0.3 + (feet - 0.6)) * height  # nearer is larger
        feet *= height
        direction = (1.0 if tid == 0 else -1.0) if crossing else float(rng.choice((-1.0, 1.0)))
        speed = (0.8 if crossing else rng.uniform(0.5, 1.0)) * size / cfg.fps
        if crossing:  # both reach the centre at the middle frame
            x0 = width / 2 - direction * speed * (n - 1) / 2
            vy = 0.0
        else:
            x0, vy = rng.uniform(0, width), rng.uniform(-0.05, 0.05) * speed
        yaw = direction * math.radians(70.0 if crossing else rng.uniform(50, 85))
        start, velocity = (x0, feet - 0.5 * size), (direction * speed, vy)
        phase, props = rng.uniform(0, 2 * math.pi), sample_proportions(rng)
        track = Track(tid, start, velocity, size, yaw, phase, props, sample_appearance(rng))
        tracks.append(_with_motion(track, rng, cfg, direction))
    return tracks


def _with_motion(
    track: Track, rng: np.random.Generator, cfg: VideoConfig, direction: float
) -> Track:
    """A walker of `sample_tracks` changed into a figure of `cfg.motion`."""
    n, size, fps = cfg.num_frames, track.height, cfg.fps
    centre_frame = (n - 1) / 2
    if cfg.motion == "swing":  # slower travel, two wide gait cycles per second
        speed = rng.uniform(0.3, 0.5) * size / fps
        rate = 2 * math.pi * rng.uniform(1.6, 2.4) / fps
        x0 = track.start[0] + (abs(track.velocity[0]) - speed) * direction * centre_frame
        return replace(
            track, start=(x0, track.start[1]), velocity=(direction * speed, track.velocity[1]),
            phase_rate=rate, swing=True,
        )  # fmt: skip
    if cfg.motion == "turn":  # half a turn to a turn per second, either way, while strolling
        speed = rng.uniform(0.15, 0.3) * size / fps
        yaw_rate = float(rng.choice((-1.0, 1.0))) * math.pi * rng.uniform(1.0, 2.0) / fps
        x0 = track.start[0] + (abs(track.velocity[0]) - speed) * direction * centre_frame
        return replace(
            track, start=(x0, track.start[1]), velocity=(direction * speed, track.velocity[1]),
            yaw_rate=yaw_rate, phase_rate=2 * math.pi * 0.6 / fps,
        )  # fmt: skip
    if cfg.motion == "enter":  # in from one side at a staggered frame, out by the other
        crossing = track.track_id < 2
        span = cfg.width + 0.8 * size
        frames = n * (0.7 if crossing else rng.uniform(0.5, 0.8))
        speed = span / frames
        enter = (n - frames) / 2 if crossing else rng.uniform(0.0, n - frames)
        first_x = -0.4 * size if direction > 0 else cfg.width + 0.4 * size
        x0 = first_x - direction * speed * enter
        return replace(track, start=(x0, track.start[1]), velocity=(direction * speed, 0.0))
    return track


def _track_entry(track_id: int, person: PersonLabel, annotate: bool) -> dict:
    return {
        "track_id": track_id,
        "keypoints": _keypoint_list(person.keypoints),
        "bbox": _rounded(person.bbox),
        "area": person.visible_area,
        "annotated": annotate,
    }


def generate_video(
    path: Path, config: VideoConfig | None = None, seed: int = 0, index: int = 0
) -> VideoPaths:
    """Write an H.264 mp4 (PyAV, yuv420p, `config.fps`) and `<path>.json` ground truth.

    The JSON holds fps, size, num_frames, the tracks' straight-line trajectories, and `frames`:
    per frame a list of {"track_id", "keypoints" [x, y, v] * 17, "bbox" [x, y, w, h], "area"
    (visible pixels), "annotated"} for every figure with at least one visible pixel (same
    visibility rules as the still images); "annotated" is false for a figure that shows too little
    of itself to be annotated in a still image (`annotated`), which evaluation ignores.
    """
    cfg = config or VideoConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = image_rng(seed, Split.VIDEO, index)
    background, _ = make_background(rng, cfg.height, cfg.width)
    tracks = sample_tracks(rng, cfg)
    frames = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=cfg.fps)
        stream.width, stream.height, stream.pix_fmt = cfg.width, cfg.height, "yuv420p"
        stream.options = {"crf": str(cfg.crf), "preset": "veryfast"}
        for t in range(cfg.num_frames):
            # Nearer walkers (feet lower in the image) are drawn later, in front.
            order = sorted(
                tracks, key=lambda tr: tr.start[1] + t * tr.velocity[1] + 0.5 * tr.height
            )
            scene = render_scene(background, [tr.at(t) for tr in order])
            people = sorted(zip(order, scene.people, strict=True), key=lambda tp: tp[0].track_id)
            shown = {id(p) for p in annotated(scene, SceneConfig())}
            frames.append(
                [
                    _track_entry(tr.track_id, p, id(p) in shown)
                    for tr, p in people
                    if p.bbox is not None
                ]
            )
            frame = av.VideoFrame.from_ndarray(scene.image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    gt = {
        "video": path.name,
        "fps": cfg.fps,
        "motion": cfg.motion,
        "width": cfg.width,
        "height": cfg.height,
        "num_frames": cfg.num_frames,
        "tracks": [
            {
                "track_id": tr.track_id,
                "height": round(tr.height, 2),
                "start": _rounded(tr.start),
                "velocity": [round(v, 6) for v in tr.velocity],
                "yaw_rate": round(tr.yaw_rate, 6),
            }
            for tr in tracks
        ],
        "frames": frames,
    }
    gt_path = path.with_suffix(".json")
    _write_json(gt_path, gt)
    log.info("wrote %s: %d frames, %d figures (%s)", path, cfg.num_frames, len(tracks), cfg.motion)
    return VideoPaths(path, gt_path)


# ----------------------------------------------------------------------------- CLI


def _size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset root to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=64, help="train images")
    parser.add_argument("--val", type=int, default=32, help="val images")
    parser.add_argument("--aic", type=int, default=32, help="AI Challenger format images")
    parser.add_argument("--unlabeled", type=int, default=32, help="unlabeled images")
    parser.add_argument("--max-people", type=int, default=4, help="figures per image (0..N)")
    parser.add_argument("--min-size", type=_size, default=(256, 192), help="smallest image WxH")
    parser.add_argument("--max-size", type=_size, default=(640, 480), help="largest image WxH")
    parser.add_argument("--videos", type=int, default=1, help="clips")
    parser.add_argument("--video-size", type=_size, default=(320, 240), help="e.g. 1920x1080")
    parser.add_argument("--video-fps", type=int, default=25)
    parser.add_argument("--video-seconds", type=float, default=2.0)
    parser.add_argument("--video-people", type=int, default=2, help=">= 2: the first two cross")
    parser.add_argument(
        "--video-motion", choices=MOTIONS, default="walk", help="what the figures do (VideoConfig)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        scene = SceneConfig(
            min_size=args.min_size[::-1], max_size=args.max_size[::-1], max_people=args.max_people
        )
        video = VideoConfig(
            width=args.video_size[0], height=args.video_size[1], fps=args.video_fps,
            seconds=args.video_seconds, num_people=args.video_people, motion=args.video_motion,
        )  # fmt: skip
        cfg = SyntheticConfig(
            seed=args.seed, num_train=args.train, num_val=args.val, num_aic=args.aic,
            num_unlabeled=args.unlabeled, num_videos=args.videos, scene=scene, video=video,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    paths = generate_dataset(args.out, cfg)
    persons = sum(
        len(json.loads(p.read_text())["annotations"])
        for p in (paths.train_annotations, paths.val_annotations)
    )
    print(
        f"wrote {cfg.num_train} train + {cfg.num_val} val images ({persons} persons), "
        f"{cfg.num_aic} AIC, {cfg.num_unlabeled} unlabeled, {cfg.num_videos} video(s) "
        f"to {paths.root} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
