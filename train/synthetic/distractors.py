"""Person-like distractors: props about as tall as a standing figure that a person detector may
fire on, painted into a scene's background and never annotated. They are the places where
hard-negative detection mining (HNDM, paper Sec. 4.1) finds confident detections that touch
no person.

- lamp post: a head-sized globe or shade on a post on a foot, some with a crossbar and lanterns;
- dress form: a tailor's dummy, chest and hips of one fabric on a pole, a knob or a bald head on
  top, no arms or legs;
- coat stand: a pole on three legs with one or two coats (body and sleeves, no head, no legs)
  hanging from its hooks;
- shadow: a posed figure's silhouette darkening the wall, soft-edged, with no parts or colours;
- legs display: a walking figure's lower half (trousers and shoes, waist down) on a plinth, and
  nothing above.

Painted before the figures, a distractor always stands behind them, so a scene's ground truth
(part labels, visibility, boxes) is the same with and without its distractors. Pixels are image
pixels, (row i, column j) centred at (x=j, y=i).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from train.synthetic.drawing import Canvas, draw_figure
from train.synthetic.figures import (
    L_FOOT,
    L_SHIN,
    L_THIGH,
    PARTS_PER_FIGURE,
    R_FOOT,
    R_SHIN,
    R_THIGH,
    TORSO,
    Figure,
    figure_extent,
    project_figure,
)
from train.synthetic.sampling import (
    sample_appearance,
    sample_pose,
    sample_proportions,
    walking_pose,
)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
_LEG_PARTS = [PARTS_PER_FIGURE + p for p in (L_THIGH, L_SHIN, L_FOOT, R_THIGH, R_SHIN, R_FOOT)]
_UP = (0.0, -1.0)


@dataclass(frozen=True)
class Prop:
    """A distractor before it is placed: its extent around the anchor (0, 0) in pixels, and a
    painter that draws it with the anchor at image (x, y) and returns the (H, W) bool mask of the
    pixels it covered (`Canvas.drawn` for what it paints on the canvas itself, which the caller
    clears first)."""

    extent: Box
    paint: Callable[[Canvas, float, float], np.ndarray]


def _colour(rng: np.random.Generator, lo: float = 20.0, hi: float = 235.0) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def lamp_post(rng: np.random.Generator, h: float) -> Prop:
    """A post, thin or as wide as a body, with a head-sized globe (or a shade) on top, on a foot,
    and now and then a crossbar with two lanterns at shoulder height; anchor at the top centre.

    Posts with the crossbar are the ones the demo detector fires on (docs/training.md,
    "Person-like distractors")."""
    pole, top = _colour(rng, 20, 160), _colour(rng, 120, 255)
    r = h * rng.uniform(0.05, 0.08)
    post = h * rng.uniform(0.012, 0.06)
    shade, arms = rng.random() < 0.3, rng.random() < 0.4
    foot = max(h * rng.uniform(0.07, 0.14), 1.5 * post)

    def paint(c: Canvas, x: float, y: float) -> np.ndarray:
        c.capsule((x, y + 2 * r), (x, y + h - post), post, pole, 0)
        c.ellipse((x, y + h - 0.015 * h), (foot, max(1.0, 0.02 * h)), _UP, pole * 0.8, 0)
        if arms:
            bar = y + 2 * r + 0.08 * h
            c.capsule((x - 0.15 * h, bar), (x + 0.15 * h, bar), max(1.0, 0.01 * h), pole, 0)
            for u in (-0.15, 0.15):
                c.capsule((x + u * h, bar + 0.04 * h), (x + u * h, bar + 0.04 * h), r * 0.6, top, 0)
        if shade:
            cone = np.array([[-0.6, 0], [0.6, 0], [1.3, 2.4], [-1.3, 2.4]]) * r + (x, y)
            c.polygon(cone, top, 0)
        else:
            c.ellipse((x, y + 1.2 * r), (r, 1.2 * r), _UP, top, 0)
        return c.drawn.copy()

    reach = max(1.3 * r, foot, 0.2 * h if arms else 0.0)
    return Prop((-reach, 0.0, reach, h), paint)


def dress_form(rng: np.random.Generator, h: float) -> Prop:
    """A tailor's dummy of one fabric: chest and hips (the figures' trapezoids), neck and a knob
    or a bald head, on a pole and a foot; anchor at the top centre."""
    fabric = rng.choice([(225, 205, 175), (40, 38, 36), (235, 235, 230), (150, 40, 40)])
    fabric = np.asarray(fabric, np.float32) * rng.uniform(0.85, 1.05)
    pole = _colour(rng, 20, 120)
    sw, ww, hw = (h * rng.uniform(*r) for r in ((0.11, 0.14), (0.07, 0.09), (0.09, 0.12)))
    head = rng.random() < 0.5

    def paint(c: Canvas, x: float, y: float) -> np.ndarray:
        def at(u: float, v: float) -> tuple[float, float]:  # u, v as fractions of h
            return x + u * h, y + v * h

        c.capsule(at(0, 0.5), at(0, 0.95), max(1.0, 0.012 * h), pole, 0)
        c.ellipse(at(0, 0.98), (0.12 * h, max(1.0, 0.02 * h)), _UP, pole * 0.8, 0)
        c.capsule(at(0, 0.1), at(0, 0.18), 0.03 * h, fabric, 0)
        if head:
            c.ellipse(at(0, 0.065), (0.055 * h, 0.065 * h), _UP, fabric, 0)
        else:
            c.capsule(at(0, 0.09), at(0, 0.09), 0.025 * h, pole, 0)
        s, w, p = sw / h, ww / h, hw / h
        chest = [at(-s, 0.17), at(s, 0.17), at(w, 0.36), at(-w, 0.36)]
        hips = [at(-w, 0.36), at(w, 0.36), at(p, 0.46), at(0.8 * p, 0.52), at(-0.8 * p, 0.52)]
        c.polygon(np.asarray(hips, np.float32), fabric * 0.9, 0)
        c.polygon(np.asarray(chest, np.float32), fabric, 0)
        return c.drawn.copy()

    return Prop((-max(sw, 0.12 * h), 0.0, max(sw, 0.12 * h), h), paint)


def coat_stand(rng: np.random.Generator, h: float) -> Prop:
    """A pole on three legs with hooks and one or two coats hanging from them; anchor at the top
    centre."""
    wood = _colour(rng, 30, 140)
    coats = [
        (u, np.asarray(sample_appearance(rng).shirt, np.float32), rng.uniform(0.3, 0.5))
        for u in rng.permutation([-0.05, 0.05])[: int(rng.integers(1, 3))]
    ]

    def paint(c: Canvas, x: float, y: float) -> np.ndarray:
        def at(u: float, v: float) -> tuple[float, float]:
            return x + u * h, y + v * h

        c.capsule(at(0, 0.03), at(0, 0.88), max(1.0, 0.012 * h), wood, 0)
        for u in (-0.13, 0.02, 0.13):
            c.capsule(at(0, 0.85), at(u, 0.99), max(1.0, 0.01 * h), wood, 0)
        c.capsule(at(0, 0.03), at(0, 0.03), 0.025 * h, wood, 0)
        for u in (-0.07, 0.07):
            c.capsule(at(0, 0.11), at(u, 0.06), max(1.0, 0.008 * h), wood, 0)
        for u, colour, length in coats:
            top, bottom = 0.08, 0.08 + length
            body = [at(u - 0.06, top), at(u + 0.06, top), at(u + 0.1, bottom), at(u - 0.1, bottom)]
            for side in (-1, 1):  # empty sleeves
                arm = (at(u + side * 0.07, top + 0.02), at(u + side * 0.09, top + 0.3))
                c.capsule(*arm, 0.025 * h, colour * 0.8, 0)
            c.polygon(np.asarray(body, np.float32), colour, 0)
        return c.drawn.copy()

    return Prop((-0.2 * h, 0.0, 0.2 * h, h), paint)


def _posed_figure(rng: np.random.Generator, h: float, walking: bool) -> Figure:
    if walking:
        yaw = rng.uniform(-math.pi, math.pi)
        pose = walking_pose(rng.uniform(0, 2 * math.pi), yaw, rng.uniform(10, 30))
    else:
        pose = sample_pose(rng)
    return Figure(pose, sample_proportions(rng), sample_appearance(rng), h, (0.0, 0.0))


def shadow(rng: np.random.Generator, h: float) -> Prop:
    """A figure's silhouette darkening the background, soft-edged; anchor at its hips."""
    fig = _posed_figure(rng, h, walking=False)
    strength, blur = rng.uniform(0.3, 0.6), rng.uniform(0.6, 2.5)

    def paint(c: Canvas, x: float, y: float) -> np.ndarray:
        ghost = Canvas(np.zeros_like(c.image))
        placed = replace(fig, pelvis=(x, y))
        draw_figure(ghost, placed, project_figure(placed), 0)
        mask = ghost.labels > 0
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), blur)
        c.image *= 1.0 - strength * alpha[..., None]
        return mask

    return Prop(figure_extent(fig), paint)


def legs_display(rng: np.random.Generator, h: float) -> Prop:
    """A walking figure's lower half, waist down, with nothing above, on a shop's plinth; anchor
    at its hips."""
    fig = _posed_figure(rng, h, walking=True)
    plinth = _colour(rng, 40, 220)

    def paint(c: Canvas, x: float, y: float) -> np.ndarray:
        placed = replace(fig, pelvis=(x, y))
        pts = project_figure(placed)
        x0, _, x1, y1 = figure_extent(placed)
        base = np.array(
            [[x0, y1 - 0.02 * h], [x1, y1 - 0.02 * h], [x1, y1 + 0.04 * h], [x0, y1 + 0.04 * h]]
        )
        c.polygon(base, plinth, 0)
        whole = Canvas(c.image)
        draw_figure(whole, placed, pts, 0)
        waist = pts.xyd[30:34, 1].mean()  # the corners the chest and pelvis boxes share
        rows = np.arange(c.image.shape[0])[:, None]
        pelvis = (whole.labels == PARTS_PER_FIGURE + TORSO) & (rows >= waist)
        mask = np.isin(whole.labels, _LEG_PARTS) | pelvis
        c.image[mask] = whole.image[mask]
        return mask | c.drawn

    x0, y0, x1, y1 = figure_extent(fig)
    return Prop((x0, y0, x1, y1 + 0.04 * h), paint)


KINDS: dict[str, Callable[[np.random.Generator, float], Prop]] = {
    "lamp_post": lamp_post,
    "dress_form": dress_form,
    "coat_stand": coat_stand,
    "shadow": shadow,
    "legs_display": legs_display,
}


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_distractors(
    background: np.ndarray,
    rng: np.random.Generator,
    max_count: int,
    avoid: Sequence[Box] = (),
    height_range: tuple[float, float] = (0.3, 0.9),
) -> tuple[np.ndarray, tuple[tuple[float, float, float, float], ...]]:
    """Paint 0..max_count distractors of random kinds into a (H, W, 3) float background.

    Each is as tall as a standing figure of `height_range` (fractions of the image height,
    log-uniform) and placed inside the image clear of `avoid` (x0, y0, x1, y1 boxes: the
    figures' extents) and of the distractors before it; one that finds no such place in 10
    tries is left out. Returns the new background and the tight (x, y, w, h) box of each
    distractor's painted pixels.
    """
    canvas = Canvas(background)
    height, width = background.shape[:2]
    taken, boxes = list(avoid), []
    lo, hi = (math.log(f * height) for f in height_range)
    names = list(KINDS)
    for _ in range(int(rng.integers(0, max_count + 1))):
        prop = KINDS[names[rng.integers(len(names))]](rng, math.exp(rng.uniform(lo, hi)))
        x0, y0, x1, y1 = prop.extent
        for _attempt in range(10):
            x = rng.uniform(-x0, max(width - x1, -x0))
            y = rng.uniform(-y0, max(height - y1, -y0))
            placed = (x + x0, y + y0, x + x1, y + y1)
            if not any(_overlaps(placed, t) for t in taken):
                break
        else:
            continue
        taken.append(placed)
        canvas.drawn[:] = False
        mask = prop.paint(canvas, x, y)
        if mask.any():
            cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
            bx, by = max(cols[0] - 0.5, 0.0), max(rows[0] - 0.5, 0.0)
            bx1, by1 = min(cols[-1] + 0.5, float(width)), min(rows[-1] + 0.5, float(height))
            boxes.append((float(bx), float(by), float(bx1 - bx), float(by1 - by)))
    return canvas.image, tuple(boxes)
