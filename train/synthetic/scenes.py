"""Still scenes of the synthetic dataset: backgrounds, figures placed and painted, and their
ground truth (COCO and AIC keypoints with visibility, boxes, areas).

Everything is a function of the seed: each image draws from its own generator seeded by
(seed, split, index), so the same seed gives byte-identical JSON and identical images.
Coordinates are image pixels with pixel (row i, column j) centred at (x=j, y=i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum

import cv2
import numpy as np

from ccm.skeleton import AIC_KEYPOINTS, AIC_TO_COCO
from train.synthetic.distractors import draw_distractors
from train.synthetic.drawing import Canvas, draw_figure
from train.synthetic.figures import (
    HEAD_TOP,
    KEYPOINT_PARTS,
    NECK,
    PARTS_PER_FIGURE,
    Figure,
    FigurePoints,
    figure_extent,
    project_figure,
)
from train.synthetic.sampling import sample_appearance, sample_pose, sample_proportions

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
    max_distractors: int = 0  # person-like props per image, 0..N (`train.synthetic.distractors`)

    def __post_init__(self) -> None:
        if min(self.min_size) < 16 or any(
            a > b for a, b in zip(self.min_size, self.max_size, strict=True)
        ):
            raise ValueError(f"image sizes need 16 <= min_size <= max_size, got {self}")
        if self.max_people < 0 or self.min_person_height < 8 or self.max_distractors < 0:
            raise ValueError(
                f"need max_people >= 0, max_distractors >= 0, min_person_height >= 8, got {self}"
            )


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
    distractors: tuple[tuple[float, float, float, float], ...]  # x, y, w, h of person-like props


def image_rng(seed: int, split: Split, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one image (stream 0), its detections (stream 1) or its distractors (2)."""
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
    if config.max_distractors:  # a stream of their own: the rest of the image stays as it was
        background, props = draw_distractors(
            background,
            image_rng(seed, split, index, 2),
            config.max_distractors,
            [figure_extent(f) for f in figures],
        )
        distractors += props
    return render_scene(background, figures, rng, distractors)


def annotated(scene: Scene, config: SceneConfig) -> list[PersonLabel]:
    """Figures that show enough of themselves to be annotated."""
    return [
        p
        for p in scene.people
        if p.bbox is not None
        and p.visible_area >= max(4, config.min_visible_fraction * p.full_area)
    ]


def keypoint_list(kpts: np.ndarray) -> list[float | int]:
    return [v for x, y, c in kpts.tolist() for v in (round(x, 2), round(y, 2), int(c))]


def rounded(box) -> list[float]:
    return [round(float(v), 2) for v in box]
