"""The browser demo's settings: the page's (`UiConfig`) and one session's (`Controls`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ccm.refine import DECODE_METHODS
from realtime.render import RenderConfig
from realtime.stream.serving import PipelineCache
from realtime.temporal.fusion import METHODS as TEMPORAL_METHODS
from realtime.weights.manifest import WEIGHTS_DIR

MAX_DET_EVERY = 30


@dataclass(frozen=True)
class UiConfig:
    """How the page behaves.

    Attributes:
        stream_every_s: the browser sends a webcam frame this often (seconds).
        stream_time_limit_s: a webcam stream ends after this many seconds (press record again).
        new_stream_gap_s: a webcam pause longer than this starts a fresh track history.
        fps_smoothing: weight of the newest frame interval in the shown FPS (an EMA).
        max_upload_mb: largest file accepted.
        max_pixels: largest image, video frame or webcam frame accepted (width x height).
        max_streams: webcams served at once; one more is told the page is full.
        batch_wait_s: how long the models wait for the other webcams' frames to batch them.
        engines: pose engines kept loaded (distinct model / flip test / decoder settings).
        keep_files_s: uploads and results are deleted this long after they were made.
        sweep_every_s: how often old files are looked for.
        queue_size: events that may wait for a worker; more are refused with "queue full".
        weights_dir: pose checkpoints (*.safetensors) offered in the model list.
        render: how skeletons, track ids and the FPS/latency overlay are drawn.
    """

    stream_every_s: float = 0.1
    stream_time_limit_s: int = 600
    new_stream_gap_s: float = 2.0
    fps_smoothing: float = 0.2
    max_upload_mb: int = 500
    max_pixels: int = 40_000_000
    max_streams: int = 4
    batch_wait_s: float = 0.02
    engines: int = 3
    keep_files_s: int = 1800
    sweep_every_s: int = 60
    queue_size: int = 16
    weights_dir: Path = WEIGHTS_DIR
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        if not self.stream_every_s > 0 or self.stream_time_limit_s < 1:
            raise ValueError(
                f"need stream_every_s > 0 and stream_time_limit_s >= 1, got "
                f"{self.stream_every_s}, {self.stream_time_limit_s}"
            )
        if not 0 < self.fps_smoothing <= 1:
            raise ValueError(f"fps_smoothing must be in (0, 1], got {self.fps_smoothing}")
        counts = (self.max_upload_mb, self.queue_size, self.max_streams, self.engines,
                  self.keep_files_s, self.sweep_every_s, self.max_pixels)  # fmt: skip
        if min(counts) < 1:
            raise ValueError(
                "max_upload_mb, queue_size, max_streams, engines, keep_files_s, "
                f"sweep_every_s and max_pixels must be >= 1, got {counts}"
            )


def pose_choices(weights_dir: Path, current: Path) -> list[tuple[str, str]]:
    """(label, path) for every pose checkpoint in `weights_dir`, plus `current` if elsewhere.

    The label is the file name (the full path only when two files share a name)."""
    paths = sorted(p.resolve() for p in weights_dir.glob("*.safetensors"))
    if current.resolve() not in paths:
        paths.insert(0, current.resolve())
    names = [p.name for p in paths]
    return [(p.name if names.count(p.name) == 1 else str(p), str(p)) for p in paths]


@dataclass(frozen=True)
class Controls:
    """One session's settings."""

    pose: Path
    det_every: int
    flip_test: bool
    decoder: str
    temporal: str

    DECODERS: ClassVar[tuple[str, ...]] = tuple(DECODE_METHODS)
    TEMPORAL: ClassVar[tuple[str, ...]] = tuple(TEMPORAL_METHODS)

    def values(self) -> tuple[str, int, bool, str, str]:
        """What the page's controls show, in their order."""
        return str(self.pose), self.det_every, self.flip_test, self.decoder, self.temporal

    def to_saved(self) -> dict[str, Any]:
        """The form kept in the browser (`from_saved` reads it back)."""
        return dict(
            zip(
                ("pose", "det_every", "flip_test", "decoder", "temporal"),
                self.values(),
                strict=True,
            )
        )

    @classmethod
    def from_saved(cls, saved: Any, fallback: Controls, poses: list[str]) -> Controls:
        """Settings from the browser (or any client), each value checked; a missing or unknown
        one keeps `fallback`'s. Only a checkpoint in `poses` (the offered list) is taken."""
        saved = saved if isinstance(saved, dict) else {}
        pose = saved.get("pose")
        pose = Path(pose) if isinstance(pose, str) and pose in poses else fallback.pose
        try:
            det_every = int(saved.get("det_every", fallback.det_every))
        except (TypeError, ValueError, OverflowError):
            det_every = fallback.det_every
        if not 1 <= det_every <= MAX_DET_EVERY:
            det_every = fallback.det_every
        flip = saved.get("flip_test", fallback.flip_test)
        flip = flip if isinstance(flip, bool) else fallback.flip_test
        decoder = saved.get("decoder")
        decoder = decoder if decoder in cls.DECODERS else fallback.decoder
        temporal = saved.get("temporal")
        temporal = temporal if temporal in cls.TEMPORAL else fallback.temporal
        return cls(pose, det_every, flip, decoder, temporal)


def describe(engines: PipelineCache, controls: Controls) -> str:
    """Markdown naming the models a session uses."""
    detector = getattr(getattr(engines.detector, "config", None), "weights", "custom")
    base = engines.base
    pose = next((p.estimator.pose for k, p in engines.items() if k.pose == controls.pose), None)
    about = ""
    if pose is not None:
        h, w = pose.input_size
        ap = pose.metrics.get("AP")
        about = f" ({pose.arch}, input {h}x{w}{f', AP {ap:.3f}' if isinstance(ap, float) else ''})"
    c = base.config
    return (
        f"**Pose model:** `{controls.pose.name}`{about}  \n"
        f"**Person detector:** `{Path(str(detector)).name}`  \n"
        f"**Device:** {c.device} ({c.backend}, {c.resolved_precision})  \n"
        f"**Yours:** detect every {controls.det_every} frames, flip test "
        f"{'on' if controls.flip_test else 'off'}, {controls.decoder} decoder, "
        f"{controls.temporal} smoothing"
    )
