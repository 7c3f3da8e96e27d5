"""Draw poses, track ids and an FPS / latency overlay onto RGB frames with OpenCV.

    out = render_frame(frame, poses, fps=29.8, latency_ms=41.0)   # a new array; `frame` untouched

`draw_poses` and `draw_stats` draw in place onto a C-contiguous, writeable (H, W, 3) uint8 RGB
array.
Lines and circles are anti-aliased (cv2.LINE_AA) and placed with 1/16 px precision (cv2's `shift`),
so a keypoint at x = 10.5 sits between pixel centres 10 and 11 (pixel centres at integers, as in
the rest of the project). Line widths, radii and text grow with the frame's shorter side.
Colours are RGB, matching the frame.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

from ccm.poses import FramePoses
from ccm.skeleton import COCO_KEYPOINT_COLORS, COCO_LIMB_COLORS, COCO_LIMBS

Color = tuple[int, int, int]

_SHIFT = 4  # fractional bits of cv2 coordinates: 1/16 px
_ONE = 1 << _SHIFT
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN = 0.618033988749895  # hue step that spreads consecutive track ids around the colour wheel
UNTRACKED_COLOR: Color = (160, 160, 160)


@dataclass(frozen=True)
class RenderConfig:
    """What to draw, and how big.

    Attributes:
        keypoint_thr: a joint is drawn only if its score exceeds this; a limb only if both of its
            joints are drawn.
        draw_boxes: draw each person's box in the track colour.
        draw_track_ids: draw a "#id" label in the track colour at each box's top-left corner
            (people with track id < 0 get none).
        scale: multiplies every line width, radius and font size.
        reference_size: shorter frame side (px) at which `scale` 1 gives 3 px limbs.
        limbs / limb_colors / keypoint_colors: the skeleton as data (COCO-17 by default).
    """

    keypoint_thr: float = 0.3
    draw_boxes: bool = False
    draw_track_ids: bool = True
    scale: float = 1.0
    reference_size: int = 480
    limbs: tuple[tuple[int, int], ...] = COCO_LIMBS
    limb_colors: tuple[Color, ...] = COCO_LIMB_COLORS
    keypoint_colors: tuple[Color, ...] = COCO_KEYPOINT_COLORS

    def __post_init__(self) -> None:
        if len(self.limbs) != len(self.limb_colors):
            raise ValueError(f"{len(self.limbs)} limbs but {len(self.limb_colors)} limb colours")
        if not self.scale > 0 or self.reference_size <= 0:
            raise ValueError(
                f"scale and reference_size must be > 0, got {self.scale}, {self.reference_size}"
            )


@dataclass(frozen=True)
class _Sizes:
    limb: int
    joint_radius: int
    box: int
    font_scale: float
    text: int
    pad: int

    @classmethod
    def for_frame(cls, height: int, width: int, config: RenderConfig) -> _Sizes:
        unit = min(height, width) / config.reference_size * config.scale
        return cls(
            limb=max(1, round(3 * unit)),
            joint_radius=max(2, round(4 * unit)),
            box=max(1, round(2 * unit)),
            font_scale=max(0.4, 0.6 * unit),
            text=max(1, round(1.5 * unit)),
            pad=max(2, round(4 * unit)),
        )


def track_color(track_id: int) -> Color:
    """A stable, distinct RGB colour per track id (grey for untracked, id < 0)."""
    if track_id < 0:
        return UNTRACKED_COLOR
    r, g, b = colorsys.hsv_to_rgb((track_id * _GOLDEN) % 1.0, 0.7, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def render_frame(
    frame: np.ndarray,
    poses: FramePoses,
    fps: float | None = None,
    latency_ms: float | None = None,
    config: RenderConfig | None = None,
) -> np.ndarray:
    """A copy of `frame` with `poses` and the stats overlay drawn; `frame` is not modified.

    Args:
        frame: (H, W, 3) uint8 RGB.
        poses: the people in this frame, in image pixels (torch or numpy arrays).
        fps, latency_ms: shown in the top-left corner; None leaves that item out.
    """
    _check_frame(frame, writeable=False)
    out = frame.copy()
    draw_poses(out, poses, config)
    draw_stats(out, fps, latency_ms, config)
    return out


def draw_poses(
    frame: np.ndarray, poses: FramePoses, config: RenderConfig | None = None
) -> np.ndarray:
    """Draw limbs, joints, optional boxes and track-id labels onto `frame` in place.

    Args:
        frame: (H, W, 3) uint8 RGB, C-contiguous and writeable.
        poses: boxes (N, 4) and keypoints (N, K, 3) in image pixels of `frame`.

    Returns:
        `frame`.
    """
    config = config or RenderConfig()
    _check_frame(frame, writeable=True)
    if len(poses) == 0:
        return frame
    p = poses.numpy()  # the one device->host copy
    k = p.keypoints.shape[1]
    if max(max(a, b) for a, b in config.limbs) >= k or len(config.keypoint_colors) < k:
        raise ValueError(f"the skeleton in RenderConfig does not fit poses with {k} keypoints")
    h, w = frame.shape[:2]
    sizes = _Sizes.for_frame(h, w, config)
    # The threshold in the scores' own dtype, so a float32 score of 0.3 is not above 0.3.
    above = p.keypoints[..., 2] > np.asarray(config.keypoint_thr, dtype=p.keypoints.dtype)
    kpts = p.keypoints.astype(np.float64)
    shown = above & np.isfinite(kpts[..., :2]).all(-1)  # (N, K)
    # Far-off coordinates are clamped so they fit cv2's int32 fixed point; cv2 clips to the frame.
    limit = 4 * max(h, w)
    pts = np.round(np.clip(np.nan_to_num(kpts[..., :2]), -limit, limit) * _ONE).astype(np.int64)
    boxes = np.clip(np.nan_to_num(p.boxes.astype(np.float64)), -limit, limit)

    for i in range(len(p.boxes)):
        for (a, b), color in zip(config.limbs, config.limb_colors, strict=True):
            if shown[i, a] and shown[i, b]:
                pa, pb = tuple(map(int, pts[i, a])), tuple(map(int, pts[i, b]))
                cv2.line(frame, pa, pb, color, sizes.limb, cv2.LINE_AA, _SHIFT)
        for j in np.flatnonzero(shown[i]):
            center = tuple(map(int, pts[i, j]))
            radius = sizes.joint_radius * _ONE
            cv2.circle(frame, center, radius, config.keypoint_colors[j], -1, cv2.LINE_AA, _SHIFT)
        track_id = int(p.track_ids[i])
        color = track_color(track_id)
        if config.draw_boxes:
            corners = np.round(boxes[i] * _ONE).astype(np.int64).tolist()
            cv2.rectangle(frame, corners[:2], corners[2:], color, sizes.box, cv2.LINE_AA, _SHIFT)
        if config.draw_track_ids and track_id >= 0:
            _draw_label(frame, f"#{track_id}", boxes[i, 0], boxes[i, 1], color, sizes)
    return frame


def draw_stats(
    frame: np.ndarray,
    fps: float | None,
    latency_ms: float | None,
    config: RenderConfig | None = None,
) -> tuple[int, int, int, int] | None:
    """Draw "FPS" and "latency" text on a darkened panel in the top-left corner, in place.

    Returns:
        The panel as (x1, y1, x2, y2) pixel bounds (x2, y2 exclusive), or None if nothing was drawn.
    """
    config = config or RenderConfig()
    _check_frame(frame, writeable=True)
    parts = []
    if fps is not None:
        parts.append(f"{fps:.1f} FPS")
    if latency_ms is not None:
        parts.append(f"{latency_ms:.0f} ms")
    if not parts:
        return None
    h, w = frame.shape[:2]
    sizes = _Sizes.for_frame(h, w, config)
    text = "  ".join(parts)
    (tw, th), baseline = cv2.getTextSize(text, _FONT, sizes.font_scale, sizes.text)
    x2, y2 = min(w, tw + 3 * sizes.pad), min(h, th + baseline + 3 * sizes.pad)
    panel = frame[sizes.pad : y2, sizes.pad : x2]
    panel[:] = panel // 3  # darken rather than hide what is underneath
    origin = (2 * sizes.pad, sizes.pad * 2 + th)
    cv2.putText(
        frame, text, origin, _FONT, sizes.font_scale, (255, 255, 255), sizes.text, cv2.LINE_AA
    )
    return sizes.pad, sizes.pad, x2, y2


def _draw_label(
    frame: np.ndarray, text: str, x: float, y: float, color: Color, sizes: _Sizes
) -> None:
    """A filled tag in `color` with `text` on top of (x, y); below it when that leaves the frame."""
    h, w = frame.shape[:2]
    (tw, th), baseline = cv2.getTextSize(text, _FONT, sizes.font_scale, sizes.text)
    tag_w, tag_h = tw + 2 * sizes.pad, th + baseline + sizes.pad
    x1 = int(min(max(math.floor(x), 0), max(w - tag_w, 0)))
    y_top = math.floor(y) - tag_h
    y1 = int(min(y_top if y_top >= 0 else max(math.floor(y), 0), max(h - tag_h, 0)))
    cv2.rectangle(frame, (x1, y1), (x1 + tag_w - 1, y1 + tag_h - 1), color, -1)
    ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 128 else (255,) * 3
    origin = (x1 + sizes.pad, y1 + th + sizes.pad // 2)
    cv2.putText(frame, text, origin, _FONT, sizes.font_scale, ink, sizes.text, cv2.LINE_AA)


def _check_frame(frame: np.ndarray, writeable: bool) -> None:
    if (
        not isinstance(frame, np.ndarray)
        or frame.dtype != np.uint8
        or frame.ndim != 3
        or frame.shape[2] != 3
    ):
        shape = getattr(frame, "shape", None)
        raise ValueError(
            f"frame must be an (H, W, 3) uint8 RGB array, got {type(frame).__name__} "
            f"{getattr(frame, 'dtype', '')} {shape}"
        )
    if writeable and not (frame.flags.c_contiguous and frame.flags.writeable):
        raise ValueError(
            "drawing in place needs a C-contiguous, writeable frame "
            "(use render_frame, which draws on a copy)"
        )
