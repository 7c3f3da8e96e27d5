"""What the benchmark times (source, frames, mode, people per frame) and where it writes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from realtime.samples import SYNTHETIC_WALK

MODES = ("throughput", "latency")


@dataclass(frozen=True)
class BenchConfig:
    """What to time and where to write the report.

    `frames` are timed after `warmup` untimed ones; `people_from_gt` (a ground-truth JSON of a
    `train.synthetic` video) and `fixed_people` (N) replace the detector's boxes, at most one.
    With `reference`, every YOLO-pose peer in `reference_weights` is timed after ours, one after
    the other, on the same frames (a single str or Path is taken as a one-peer tuple).
    """

    source: Path = SYNTHETIC_WALK
    frames: int = 200
    warmup: int = 20
    mode: str = "throughput"
    out: Path = Path("bench")
    reference: bool = False
    reference_weights: tuple[str | Path, ...] = ("yolo11n-pose.pt",)
    people_from_gt: Path | None = None
    fixed_people: int | None = None

    def __post_init__(self) -> None:
        weights = self.reference_weights
        # frozen: the one place a field is normalised (a list would make the config unhashable)
        object.__setattr__(
            self,
            "reference_weights",
            (weights,) if isinstance(weights, (str, Path)) else tuple(weights),
        )
        if not self.reference_weights:
            raise ValueError("reference_weights must name at least one YOLO-pose model")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose from {MODES}")
        if self.fixed_people is not None and self.fixed_people < 1:
            raise ValueError(f"fixed_people must be >= 1, got {self.fixed_people}")
        if self.fixed_people is not None and self.people_from_gt is not None:
            raise ValueError("choose one of people_from_gt and fixed_people, not both")


def parse_buckets(text: str) -> tuple[int, ...]:
    """`--batch-buckets` "8,32" -> (8, 32): increasing positive ints, else an argparse error."""
    try:
        buckets = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
        raise argparse.ArgumentTypeError(f"buckets must be increasing and >= 1: {text!r}")
    return buckets
