"""Articulated human figures for the synthetic dataset: skeleton, poses and rasterisation.

A figure is a 3D stick skeleton whose segment lengths are fractions of standing height
(Drillis-Contini anthropometry) and whose joint angles stay inside human limits. It is projected
orthographically into image pixel space, where pixel (row i, column j) has its centre at
(x=j, y=i), and painted back to front as shaded, outlined capsules with a head and a face.

Body frame: x = the person's left, y = up, z = forward (the way the chest faces); unit = standing
height. Camera frame: X = image right, Y = up, D = depth away from the camera.

Left/right cue: the figure's left sleeve, trouser leg and shoe are a light tint of the clothing
colour and the right ones a dark shade of it. Together with the face (eyes, nose, ears and the
hairline turned the way the head faces) a network can tell the two sides apart in any view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np

# Indices into FigurePoints.xyd: the 17 COCO keypoints first, then extra construction points.
HEAD_TOP, NECK, HEAD_CENTRE, SHOULDER_MID, PELVIS = 17, 18, 19, 20, 21
L_HAND_TIP, R_HAND_TIP, L_TOE, R_TOE = 22, 23, 24, 25
CHEST_CORNERS, PELVIS_CORNERS = slice(26, 34), slice(30, 38)  # they share the 4 waist corners
NUM_POINTS = 38

# Part labels painted into the label map; a figure's labels are (figure index + 1) * 16 + part.
TORSO, NECK_PART, HEAD = 1, 2, 3
L_UPPER_ARM, L_FOREARM, L_HAND, R_UPPER_ARM, R_FOREARM, R_HAND = 4, 5, 6, 7, 8, 9
L_THIGH, L_SHIN, L_FOOT, R_THIGH, R_SHIN, R_FOOT = 10, 11, 12, 13, 14, 15
PARTS_PER_FIGURE = 16
_ARM_PARTS = frozenset({L_UPPER_ARM, L_FOREARM, L_HAND, R_UPPER_ARM, R_FOREARM, R_HAND})

# Parts a keypoint belongs to: it is visible when the topmost paint at its pixel is one of these.
KEYPOINT_PARTS: tuple[frozenset[int], ...] = (
    *(frozenset({HEAD}),) * 5,
    frozenset({TORSO, L_UPPER_ARM}), frozenset({TORSO, R_UPPER_ARM}),
    frozenset({L_UPPER_ARM, L_FOREARM}), frozenset({R_UPPER_ARM, R_FOREARM}),
    frozenset({L_FOREARM, L_HAND}), frozenset({R_FOREARM, R_HAND}),
    frozenset({TORSO, L_THIGH}), frozenset({TORSO, R_THIGH}),
    frozenset({L_THIGH, L_SHIN}), frozenset({R_THIGH, R_SHIN}),
    frozenset({L_SHIN, L_FOOT}), frozenset({R_SHIN, R_FOOT}),
    frozenset({HEAD}), frozenset({NECK_PART, TORSO, HEAD}),  # head top, neck
)  # fmt: skip

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Proportions:
    """Segment lengths and radii as fractions of standing height."""

    torso: float = 0.29  # hip-joint midpoint to shoulder midpoint
    neck: float = 0.107  # shoulder midpoint to head centre
    head_radius: float = 0.062  # horizontal; the head is 1.18x taller than wide
    shoulder_half: float = 0.125
    hip_half: float = 0.085
    upper_arm: float = 0.186
    forearm: float = 0.146
    hand: float = 0.085
    thigh: float = 0.245
    shin: float = 0.246
    foot: float = 0.13
    torso_depth: float = 0.07  # half the chest's front-back thickness
    arm_radius: float = 0.03
    forearm_radius: float = 0.024
    thigh_radius: float = 0.046
    shin_radius: float = 0.034
    neck_radius: float = 0.03

    def scaled(self, length: float, width: float) -> Proportions:
        """Copy with lengths multiplied by `length` and radii by `width`."""
        values = {
            f.name: getattr(self, f.name) * (width if f.name.endswith("radius") else length)
            for f in fields(self)
        }
        values["head_radius"] = self.head_radius * length  # a head does not get wider with build
        return Proportions(**values)


@dataclass(frozen=True)
class Pose:
    """Joint angles in radians; pairs are (left, right).

    yaw: 0 faces the camera, +pi/2 faces image right. tilt: roll of the whole body in the image
    plane, positive turns the head toward image right. Flexion swings a limb forward, abduction
    lifts it sideways away from the body, elbow/knee are bend angles from straight.
    """

    yaw: float = 0.0
    tilt: float = 0.0
    spine_pitch: float = 0.0
    spine_roll: float = 0.0
    spine_twist: float = 0.0
    neck_yaw: float = 0.0
    neck_pitch: float = 0.0
    neck_roll: float = 0.0
    shoulder_flex: tuple[float, float] = (0.0, 0.0)
    shoulder_abd: tuple[float, float] = (0.0, 0.0)
    arm_twist: tuple[float, float] = (0.0, 0.0)
    elbow: tuple[float, float] = (0.0, 0.0)
    hip_flex: tuple[float, float] = (0.0, 0.0)
    hip_abd: tuple[float, float] = (0.0, 0.0)
    knee: tuple[float, float] = (0.0, 0.0)
    ankle: tuple[float, float] = (0.0, 0.0)


# Range of motion of every Pose field except yaw (any facing is possible), in degrees.
POSE_LIMITS_DEG: dict[str, tuple[float, float]] = {
    "tilt": (-30, 30), "spine_pitch": (-15, 45), "spine_roll": (-20, 20),
    "spine_twist": (-30, 30), "neck_yaw": (-60, 60), "neck_pitch": (-30, 40),
    "neck_roll": (-25, 25), "shoulder_flex": (-50, 170), "shoulder_abd": (-10, 170),
    "arm_twist": (-60, 60), "elbow": (0, 145), "hip_flex": (-25, 120), "hip_abd": (-15, 45),
    "knee": (0, 140), "ankle": (-20, 40),
}  # fmt: skip


@dataclass(frozen=True)
class Appearance:
    """Colours (RGB, 0-255) of one figure."""

    skin: RGB
    hair: RGB
    shirt: RGB
    trousers: RGB
    shoes: RGB


@dataclass(frozen=True)
class Figure:
    """A posed figure placed in an image: standing height and hip-midpoint position in pixels."""

    pose: Pose
    proportions: Proportions
    appearance: Appearance
    height: float
    pelvis: tuple[float, float]


@dataclass(frozen=True, eq=False)
class FigurePoints:
    """A projected figure.

    xyd: (NUM_POINTS, 3) image x, y in pixels and depth in pixels (larger = farther).
    face_toward: (5,) bool, which COCO face points (nose, eyes, ears) turn toward the camera.
    head_forward, head_up: (3,) unit vectors of the head in camera axes (x right, y down, depth).
    radii: pixel radii of the parts, keyed like Proportions.
    """

    xyd: np.ndarray
    face_toward: np.ndarray
    head_forward: np.ndarray
    head_up: np.ndarray
    head_radius: float
    radii: dict[str, float]


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_DOWN = np.array([0.0, -1.0, 0.0])
_MIRROR = np.array([-1.0, 1.0, 1.0])  # left-side limb construction -> right side


def body_points(pose: Pose, props: Proportions) -> tuple[np.ndarray, np.ndarray]:
    """Skeleton in the body frame (unit = standing height, origin at the hip midpoint).

    Returns points (NUM_POINTS, 3) and the head rotation (3, 3) (columns: head x, y, z axes).
    """
    p = props
    pts = np.zeros((NUM_POINTS, 3))
    torso_rot = _rz(pose.spine_roll) @ _rx(pose.spine_pitch) @ _ry(pose.spine_twist)
    shoulder_mid = torso_rot @ np.array([0.0, p.torso, 0.0])
    head_rot = torso_rot @ _ry(pose.neck_yaw) @ _rx(pose.neck_pitch) @ _rz(pose.neck_roll)
    head = shoulder_mid + head_rot @ np.array([0.0, p.neck, 0.0])
    r, ry = p.head_radius, 1.18 * p.head_radius
    pts[SHOULDER_MID], pts[HEAD_CENTRE] = shoulder_mid, head
    # AIC's neck sits at the base of the neck, a little above the shoulder line.
    pts[NECK] = shoulder_mid + head_rot @ np.array([0.0, 0.2 * p.neck, 0.0])
    pts[HEAD_TOP] = head + head_rot @ np.array([0.0, 0.95 * ry, 0.0])
    face_dirs = (
        (0.0, -0.15, 1.0), (0.43, 0.17, 0.89), (-0.43, 0.17, 0.89), (1.0, 0.0, -0.05),
        (-1.0, 0.0, -0.05),
    )  # fmt: skip
    for k, d in enumerate(face_dirs):
        reach = 1.12 if k == 0 else 1.0  # the nose sticks out of the head
        pts[k] = head + head_rot @ (reach * np.array(d) * np.array([r, ry, r]))

    for side, s in ((0, 1.0), (1, -1.0)):  # left limbs are built, right ones mirrored
        arm_rot = _rx(-pose.shoulder_flex[side]) @ _rz(pose.shoulder_abd[side])
        arm_rot = arm_rot @ _ry(pose.arm_twist[side])
        fore_rot = arm_rot @ _rx(-pose.elbow[side])  # an elbow bends the forearm forward

        def arm(v: np.ndarray, s: float = s) -> np.ndarray:
            return torso_rot @ (v * (_MIRROR if s < 0 else 1.0))

        shoulder = shoulder_mid + torso_rot @ np.array([s * p.shoulder_half, 0.0, 0.0])
        elbow = shoulder + arm(arm_rot @ _DOWN) * p.upper_arm
        wrist = elbow + arm(fore_rot @ _DOWN) * p.forearm
        pts[5 + side], pts[7 + side], pts[9 + side] = shoulder, elbow, wrist
        pts[L_HAND_TIP + side] = wrist + arm(fore_rot @ _DOWN) * p.hand

        leg_rot = _rx(-pose.hip_flex[side]) @ _rz(pose.hip_abd[side])
        shin_rot = leg_rot @ _rx(pose.knee[side])  # a knee bends the shin backward
        foot_rot = shin_rot @ _rx(-math.pi / 2 + pose.ankle[side])
        mirror = _MIRROR if s < 0 else 1.0
        hip = np.array([s * p.hip_half, 0.0, 0.0])
        knee = hip + (leg_rot @ _DOWN) * mirror * p.thigh
        ankle = knee + (shin_rot @ _DOWN) * mirror * p.shin
        pts[11 + side], pts[13 + side], pts[15 + side] = hip, knee, ankle
        pts[L_TOE + side] = ankle + (foot_rot @ _DOWN) * mirror * p.foot

    # Chest and pelvis boxes (front and back corners): shoulders ride on the spine, hips stay
    # with the pelvis, the waist bends half as much. They reach a little past the joints so
    # shoulder and hip points lie inside the painted torso.
    waist_rot = _rz(0.5 * pose.spine_roll) @ _rx(0.5 * pose.spine_pitch)
    shoulder_x = p.shoulder_half + 0.35 * p.arm_radius
    hip_x = p.hip_half + 0.6 * p.thigh_radius
    for row, (rot, half, y) in enumerate(
        (
            (torso_rot, shoulder_x, p.torso + 0.02),
            (waist_rot, hip_x, 0.1),
            (np.eye(3), hip_x, -0.035),
        )
    ):
        corners = [(s * half, y, z) for s in (1.0, -1.0) for z in (p.torso_depth, -p.torso_depth)]
        pts[26 + 4 * row : 30 + 4 * row] = np.array(corners) @ rot.T
    return pts, head_rot


def _body_to_camera(pose: Pose) -> np.ndarray:
    """(3, 3) map from body frame to camera (X right, Y up, D away from the camera)."""
    to_camera = np.diag([1.0, 1.0, -1.0])  # facing the camera, forward points at it
    c, s = math.cos(pose.tilt), math.sin(pose.tilt)
    roll = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return roll @ to_camera @ _ry(pose.yaw)


def project_figure(fig: Figure) -> FigurePoints:
    """Project a figure's skeleton into image pixels (see FigurePoints)."""
    pts, head_rot = body_points(fig.pose, fig.proportions)
    world = _body_to_camera(fig.pose)
    cam = pts @ world.T
    h = fig.height
    xyd = np.stack(
        [fig.pelvis[0] + h * cam[:, 0], fig.pelvis[1] - h * cam[:, 1], h * cam[:, 2]], axis=1
    )
    flip_y = np.array([1.0, -1.0, 1.0])
    head_axes = world @ head_rot
    normals = [(0.0, -0.2, 1.0), (0.5, 0.17, 0.85), (-0.5, 0.17, 0.85), (1.0, 0, 0), (-1.0, 0, 0)]
    depth_dir = np.array([head_axes[2] @ np.asarray(n) / np.linalg.norm(n) for n in normals])
    # Eyes and nose show while they face the camera; ears stay visible a little past profile.
    face_toward = depth_dir < np.array([-0.15, -0.15, -0.15, 0.25, 0.25])
    props = fig.proportions
    radii = {
        f.name: max(0.75, h * getattr(props, f.name))  # >= 0.75 px so every joint pixel is hit
        for f in fields(props)
        if f.name.endswith("radius")
    }
    return FigurePoints(
        xyd=xyd,
        face_toward=face_toward,
        head_forward=head_axes[:, 2] * flip_y,
        head_up=head_axes[:, 1] * flip_y,
        head_radius=h * props.head_radius,
        radii=radii,
    )


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


def _deg(lo: float, hi: float, rng: np.random.Generator) -> float:
    return math.radians(rng.uniform(lo, hi))


def _clip_to_limits(values: dict[str, object]) -> Pose:
    out: dict[str, object] = {}
    for name, v in values.items():
        if name in POSE_LIMITS_DEG:
            lo, hi = (math.radians(x) for x in POSE_LIMITS_DEG[name])
            v = (
                tuple(min(max(x, lo), hi) for x in v)
                if isinstance(v, tuple)
                else min(max(v, lo), hi)
            )
        out[name] = v
    return Pose(**out)


def sample_pose(rng: np.random.Generator, max_yaw_deg: float = 120.0) -> Pose:
    """A random pose inside POSE_LIMITS_DEG: upright (45%), active (35%) or sitting/crouching."""
    kind = rng.choice(3, p=(0.45, 0.35, 0.2))
    pair = lambda lo, hi: (_deg(lo, hi, rng), _deg(lo, hi, rng))  # noqa: E731
    if kind == 0:
        arms = dict(shoulder_flex=pair(-35, 50), shoulder_abd=pair(0, 40), elbow=pair(0, 100))
        legs = dict(hip_flex=pair(-20, 35), hip_abd=pair(-5, 15), knee=pair(0, 45))
    elif kind == 1:
        arms = dict(shoulder_flex=pair(-50, 170), shoulder_abd=pair(-10, 170), elbow=pair(0, 145))
        legs = dict(hip_flex=pair(-25, 100), hip_abd=pair(-10, 45), knee=pair(0, 130))
    else:
        arms = dict(shoulder_flex=pair(-20, 90), shoulder_abd=pair(0, 60), elbow=pair(10, 140))
        legs = dict(hip_flex=pair(65, 115), hip_abd=pair(-5, 30), knee=pair(60, 140))
    return _clip_to_limits(
        dict(
            yaw=_deg(-max_yaw_deg, max_yaw_deg, rng),
            tilt=math.radians(float(np.clip(rng.normal(0.0, 7.0), -30, 30))),
            spine_pitch=_deg(-10, 30, rng),
            spine_roll=_deg(-12, 12, rng),
            spine_twist=_deg(-25, 25, rng),
            neck_yaw=_deg(-50, 50, rng),
            neck_pitch=_deg(-25, 35, rng),
            neck_roll=_deg(-15, 15, rng),
            arm_twist=pair(-45, 45),
            ankle=pair(-15, 30),
            **arms,
            **legs,
        )
    )


def walking_pose(phase: float, yaw: float, stride_deg: float = 28.0) -> Pose:
    """Gait cycle at `phase` (radians): legs swing in antiphase, each arm against its leg.

    Every angle is a smooth function of phase, so a figure walking at a steady phase rate moves
    its joints smoothly from frame to frame.
    """
    a, s = math.radians(stride_deg), math.sin(phase)

    def swing_knee(ph: float) -> float:  # the knee bends most while its leg swings through
        return math.radians(6.0 + 45.0 * max(0.0, math.cos(ph - 0.4)) ** 2)

    return _clip_to_limits(
        dict(
            yaw=yaw,
            spine_pitch=math.radians(4.0),
            hip_flex=(a * s, -a * s),
            knee=(swing_knee(phase), swing_knee(phase + math.pi)),
            ankle=(math.radians(5.0), math.radians(5.0)),
            shoulder_flex=(-0.8 * a * s, 0.8 * a * s),
            shoulder_abd=(math.radians(7.0), math.radians(7.0)),
            elbow=(
                math.radians(18.0 + 12.0 * max(0.0, -s)),
                math.radians(18.0 + 12.0 * max(0.0, s)),
            ),
        )
    )


def swinging_pose(phase: float, yaw: float) -> Pose:
    """Fast limb swings at `phase` (radians): arms swing 75 degrees each way, fore and aft, with
    the elbows whipping, and the legs stride 35 degrees (a brisk, exaggerated gait).

    As in `walking_pose` every angle is a smooth function of phase; what differs is the reach of
    the swing, so the hands and feet sweep far faster than a walker's.
    """
    a, s, c = math.radians(35.0), math.sin(phase), math.cos(phase)
    arm = math.radians(75.0)

    def swing_knee(ph: float) -> float:
        return math.radians(8.0 + 60.0 * max(0.0, math.cos(ph - 0.4)) ** 2)

    return _clip_to_limits(
        dict(
            yaw=yaw,
            spine_pitch=math.radians(6.0),
            spine_twist=math.radians(8.0) * s,
            hip_flex=(a * s, -a * s),
            knee=(swing_knee(phase), swing_knee(phase + math.pi)),
            ankle=(math.radians(5.0), math.radians(5.0)),
            shoulder_flex=(-arm * s, arm * s),
            shoulder_abd=(math.radians(15.0 + 10.0 * c), math.radians(15.0 - 10.0 * c)),
            elbow=(
                math.radians(20.0 + 70.0 * max(0.0, -s)),
                math.radians(20.0 + 70.0 * max(0.0, s)),
            ),
        )
    )


_SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 90), (160, 102, 66),
    (120, 74, 48), (88, 54, 36),
)  # fmt: skip
_HAIR: tuple[RGB, ...] = (
    (20, 16, 14), (60, 40, 26), (110, 70, 40), (180, 140, 80), (150, 150, 150), (120, 40, 20),
)  # fmt: skip


def _random_colour(rng: np.random.Generator, value: tuple[float, float]) -> RGB:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(40, 255), rng.uniform(*value)]]], np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return (float(r), float(g), float(b))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Random skin tone, hair, shirt, trousers and shoes."""
    skin = np.asarray(_SKIN_TONES[rng.integers(len(_SKIN_TONES))]) * rng.uniform(0.92, 1.05)
    return Appearance(
        skin=tuple(float(v) for v in np.clip(skin, 0, 255)),
        hair=_HAIR[rng.integers(len(_HAIR))],
        shirt=_random_colour(rng, (60, 250)),
        trousers=_random_colour(rng, (40, 200)),
        shoes=_random_colour(rng, (20, 120)),
    )


def sample_proportions(rng: np.random.Generator) -> Proportions:
    """Default proportions with +-7% limb length and 0.8-1.25x build."""
    return Proportions().scaled(rng.uniform(0.93, 1.07), rng.uniform(0.8, 1.25))


def figure_extent(fig: Figure) -> tuple[float, float, float, float]:
    """Approximate full-body box (x0, y0, x1, y1) in image pixels, ignoring the image border."""
    pts = project_figure(fig)
    pad = pts.radii["thigh_radius"]
    x0, y0 = pts.xyd[:, :2].min(0) - pad
    x1, y1 = pts.xyd[:, :2].max(0) + pad
    return float(x0), float(y0), float(x1), float(y1)
