"""Random figures: poses inside human joint limits, walking and swinging gaits, appearance and
proportions."""

from __future__ import annotations

import math

import cv2
import numpy as np

from train.synthetic.figures import POSE_LIMITS_DEG, RGB, Appearance, Pose, Proportions


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
