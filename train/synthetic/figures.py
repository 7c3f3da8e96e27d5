"""Articulated human figures for the synthetic dataset: skeleton, pose and projection.

A figure is a 3D stick skeleton whose segment lengths are fractions of standing height
(Drillis-Contini anthropometry) and whose joint angles stay inside human limits. It is projected
orthographically into image pixel space, where pixel (row i, column j) has its centre at
(x=j, y=i); `train.synthetic.drawing` paints it and `train.synthetic.sampling` draws random and
moving ones.

Body frame: x = the person's left, y = up, z = forward (the way the chest faces); unit = standing
height. Camera frame: X = image right, Y = up, D = depth away from the camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

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


def figure_extent(fig: Figure) -> tuple[float, float, float, float]:
    """Approximate full-body box (x0, y0, x1, y1) in image pixels, ignoring the image border."""
    pts = project_figure(fig)
    pad = pts.radii["thigh_radius"]
    x0, y0 = pts.xyd[:, :2].min(0) - pad
    x1, y1 = pts.xyd[:, :2].max(0) + pad
    return float(x0), float(y0), float(x1), float(y1)
