"""The browser demo's settings: one session's choices, checked whatever sent them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ccm.refine import DECODE_METHODS
from realtime.serving import EngineCache
from realtime.temporal import METHODS as TEMPORAL_METHODS

MAX_DET_EVERY = 30


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


def describe(engines: EngineCache, controls: Controls) -> str:
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
