"""Painting projected figures: shaded, outlined capsules with a head and a face, back to front,
into an RGB image and a part-label map in the same strokes.

Left/right cue: the figure's left sleeve, trouser leg and shoe are a light tint of the clothing
colour and the right ones a dark shade of it. Together with the face (eyes, nose, ears and the
hairline turned the way the head faces) a network can tell the two sides apart in any view.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from train.synthetic.figures import (
    CHEST_CORNERS,
    HEAD,
    HEAD_CENTRE,
    L_FOOT,
    L_FOREARM,
    L_HAND,
    L_HAND_TIP,
    L_SHIN,
    L_THIGH,
    L_TOE,
    L_UPPER_ARM,
    NECK_PART,
    PARTS_PER_FIGURE,
    PELVIS_CORNERS,
    R_FOOT,
    R_FOREARM,
    R_HAND,
    R_SHIN,
    R_THIGH,
    R_UPPER_ARM,
    RGB,
    SHOULDER_MID,
    TORSO,
    Appearance,
    Figure,
    FigurePoints,
)

_ARM_PARTS = frozenset({L_UPPER_ARM, L_FOREARM, L_HAND, R_UPPER_ARM, R_FOREARM, R_HAND})


class Canvas:
    """An RGB float image (H, W, 3) and a part-label map (H, W) painted in the same strokes.

    Shapes are signed distance fields in image pixels; coverage 0.5 - sdf gives one pixel of
    anti-aliasing, and a pixel takes a shape's label when its centre is inside the shape.
    """

    def __init__(self, image: np.ndarray) -> None:
        self.image = image.astype(np.float32, copy=True)
        self.labels = np.zeros(image.shape[:2], np.int32)
        self.drawn = np.zeros(image.shape[:2], bool)  # the current figure's full silhouette

    def _window(self, lo: np.ndarray, hi: np.ndarray):
        h, w = self.labels.shape
        x0, y0 = max(int(math.floor(lo[0])) - 1, 0), max(int(math.floor(lo[1])) - 1, 0)
        x1, y1 = min(int(math.ceil(hi[0])) + 2, w), min(int(math.ceil(hi[1])) + 2, h)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        return (slice(y0, y1), slice(x0, x1)), xs, ys

    def _paint(self, win, sdf: np.ndarray, colour: np.ndarray, label: int) -> None:
        cov = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
        patch = self.image[win]
        self.image[win] = patch + cov * (colour - patch)
        inside = sdf < 0
        self.labels[win][inside] = label
        self.drawn[win] |= inside

    def capsule(self, a, b, radius: float, colour, label: int, shade: bool = True) -> None:
        """Segment a-b (image pixels) thickened by `radius`, shaded like a lit cylinder."""
        a, b = np.asarray(a[:2], np.float32), np.asarray(b[:2], np.float32)
        found = self._window(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
        if found is None:
            return
        win, xs, ys = found
        ab = b - a
        t = ((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / max(float(ab @ ab), 1e-6)
        t = np.clip(t, 0.0, 1.0)
        dist = np.hypot(xs - a[0] - t * ab[0], ys - a[1] - t * ab[1])
        col = np.asarray(colour, np.float32)
        if shade:
            rel = np.minimum(dist / radius, 1.0)
            gain = 1.12 - 0.4 * rel**2
            gain = np.where(dist > radius - max(0.7, 0.15 * radius), 0.5, gain)  # outline
            col = np.clip(col * gain[..., None], 0, 255)
        self._paint(win, dist - radius, col, label)

    def disc(self, centre, radius: float, colour, label: int) -> None:
        self.capsule(centre, centre, radius, colour, label, shade=False)

    def ellipse(self, centre, axes, up, colour, label: int, clip=None) -> None:
        """Ellipse with semi-axes (across, along `up`) in pixels; `clip` another to intersect."""
        c = np.asarray(centre[:2], np.float32)
        reach = max(axes)
        found = self._window(c - reach, c + reach)
        if found is None:
            return
        win, xs, ys = found
        sdf = _ellipse_sdf(xs - c[0], ys - c[1], axes, up)
        if clip is not None:
            cc = np.asarray(clip[0][:2], np.float32)
            sdf = np.maximum(sdf, _ellipse_sdf(xs - cc[0], ys - cc[1], clip[1], clip[2]))
        self._paint(win, sdf, np.asarray(colour, np.float32), label)

    def polygon(self, points: np.ndarray, colour, label: int) -> None:
        """Convex hull of points (N, 2) in pixels, with a dark outline."""
        hull = cv2.convexHull(points[:, :2].astype(np.float32)).reshape(-1, 2)
        if len(hull) < 3:
            return
        found = self._window(hull.min(0), hull.max(0))
        if found is None:
            return
        win, xs, ys = found
        edges = np.roll(hull, -1, axis=0) - hull
        nxt = np.roll(hull, -1, axis=0)
        area2 = float(np.sum(hull[:, 0] * nxt[:, 1] - nxt[:, 0] * hull[:, 1]))
        normals = np.stack([edges[:, 1], -edges[:, 0]], 1) * (1.0 if area2 > 0 else -1.0)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-6)
        sdf = np.full((ys.shape[0], xs.shape[1]), -np.inf, np.float32)
        for v, n in zip(hull, normals, strict=True):
            sdf = np.maximum(sdf, (xs - v[0]) * n[0] + (ys - v[1]) * n[1])
        col = np.asarray(colour, np.float32)
        gain = np.where(sdf > -1.0, 0.5, 1.0)[..., None]
        self._paint(win, sdf, col * gain, label)


def _ellipse_sdf(dx: np.ndarray, dy: np.ndarray, axes, up) -> np.ndarray:
    """Approximate signed distance (pixels) to an ellipse whose second axis points along `up`."""
    u = np.asarray(up[:2], np.float64)
    n = float(np.hypot(u[0], u[1]))
    u = u / n if n > 1e-3 else np.array([0.0, -1.0])
    along = dx * u[0] + dy * u[1]
    across = dx * -u[1] + dy * u[0]
    a, b = axes
    k0 = np.hypot(across / a, along / b)
    k1 = np.hypot(across / a**2, along / b**2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def tint(colour: RGB, left: bool) -> np.ndarray:
    """The left/right cue: a light tint for the figure's left side, a dark shade for its right."""
    c = np.asarray(colour, np.float32)
    return c + 0.45 * (255.0 - c) if left else 0.55 * c


def draw_figure(canvas: Canvas, fig: Figure, points: FigurePoints, index: int) -> None:
    """Paint one figure back to front; its labels are (index + 1) * 16 + part."""
    base = (index + 1) * PARTS_PER_FIGURE
    p, r, app = points.xyd, points.radii, fig.appearance
    strokes: list[tuple[float, int, object]] = []

    def add(depth: float, paint) -> None:
        strokes.append((depth, len(strokes), paint))

    def limb(a: int, b: int, radius: float, colour, part: int, joint: bool = False) -> None:
        def paint() -> None:
            canvas.capsule(p[a], p[b], radius, colour, base + part)
            if joint:  # a darker knob marks the elbow / knee
                canvas.disc(p[a], 0.8 * radius, np.asarray(colour) * 0.72, base + part)

        # Arms hang outside the thighs: on a depth tie they go in front.
        bias = -0.01 * fig.height if part in _ARM_PARTS else 0.0
        add(0.5 * (p[a, 2] + p[b, 2]) + bias, paint)

    h = fig.height
    add(
        p[PELVIS_CORNERS, 2].mean() + 0.03 * h,
        lambda: canvas.polygon(p[PELVIS_CORNERS], app.trousers, base + TORSO),
    )
    add(
        p[CHEST_CORNERS, 2].mean() + 0.03 * h,
        lambda: canvas.polygon(p[CHEST_CORNERS], app.shirt, base + TORSO),
    )
    add(
        p[HEAD_CENTRE, 2] + 0.02 * h,
        lambda: canvas.capsule(
            p[SHOULDER_MID], p[HEAD_CENTRE], r["neck_radius"], app.skin, base + NECK_PART
        ),
    )
    add(p[HEAD_CENTRE, 2], lambda: _draw_head(canvas, app, points, base + HEAD))
    for side, left in ((0, True), (1, False)):
        arm = (L_UPPER_ARM, L_FOREARM, L_HAND) if left else (R_UPPER_ARM, R_FOREARM, R_HAND)
        leg = (L_THIGH, L_SHIN, L_FOOT) if left else (R_THIGH, R_SHIN, R_FOOT)
        sleeve, trousers = tint(app.shirt, left), tint(app.trousers, left)
        limb(5 + side, 7 + side, r["arm_radius"], sleeve, arm[0])
        limb(7 + side, 9 + side, r["forearm_radius"], sleeve, arm[1], joint=True)
        limb(9 + side, L_HAND_TIP + side, 1.1 * r["forearm_radius"], app.skin, arm[2])
        limb(11 + side, 13 + side, r["thigh_radius"], trousers, leg[0])
        limb(13 + side, 15 + side, r["shin_radius"], trousers, leg[1], joint=True)
        limb(15 + side, L_TOE + side, 0.8 * r["shin_radius"], tint(app.shoes, left), leg[2])
    canvas.drawn[:] = False
    for _, _, paint in sorted(strokes, key=lambda s: (-s[0], s[1])):
        paint()


def _draw_head(canvas: Canvas, app: Appearance, pts: FigurePoints, label: int) -> None:
    """Hair-coloured skull, a skin face turned with the head, then ears, eyes and nose."""
    xy, r = pts.xyd, pts.head_radius
    centre, up, fwd = xy[HEAD_CENTRE], pts.head_up, pts.head_forward
    axes = (r, 1.18 * r)
    canvas.ellipse(centre, axes, up, app.hair, label)
    if fwd[2] < 0.5:  # some of the face turns toward the camera
        face_centre = centre[:2] + 0.45 * r * fwd[:2] - 0.3 * 1.18 * r * up[:2]
        canvas.ellipse(
            face_centre, (0.9 * r, 0.98 * 1.18 * r), up, app.skin, label, clip=(centre, axes, up)
        )
    skin = np.asarray(app.skin, np.float32)
    for k in (3, 4):
        if pts.face_toward[k]:
            canvas.capsule(xy[k], xy[k], max(0.75, 0.24 * r), skin * 0.85, label)
    for k in (1, 2):
        if pts.face_toward[k]:
            canvas.disc(xy[k], max(0.6, 0.15 * r), (25.0, 25.0, 30.0), label)
    if pts.face_toward[0]:
        canvas.disc(xy[0], max(0.6, 0.14 * r), skin * 0.65, label)
