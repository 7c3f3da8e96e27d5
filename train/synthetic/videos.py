"""Synthetic clips: figures walking, swinging, turning or crossing the frame, as H.264 mp4 with
per-frame ground truth JSON."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from ccm.poses import write_json
from train.synthetic.figures import Appearance, Figure, Proportions
from train.synthetic.sampling import (
    sample_appearance,
    sample_proportions,
    swinging_pose,
    walking_pose,
)
from train.synthetic.scenes import (
    PersonLabel,
    SceneConfig,
    Split,
    annotated,
    image_rng,
    keypoint_list,
    make_background,
    render_scene,
    rounded,
)

log = logging.getLogger(__name__)

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
class VideoPaths:
    video: Path
    ground_truth: Path


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
        "keypoints": keypoint_list(person.keypoints),
        "bbox": rounded(person.bbox),
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
                "start": rounded(tr.start),
                "velocity": [round(v, 6) for v in tr.velocity],
                "yaw_rate": round(tr.yaw_rate, 6),
            }
            for tr in tracks
        ],
        "frames": frames,
    }
    gt_path = path.with_suffix(".json")
    write_json(gt_path, gt)
    log.info("wrote %s: %d frames, %d figures (%s)", path, cfg.num_frames, len(tracks), cfg.motion)
    return VideoPaths(path, gt_path)
