"""From the demo weights to real people: the notice shown wherever the demo weights are in use,
and the recommended COCO-trained pair `python app.py weights fetch --recommended` downloads.

The recommendation depends on the machine. On a CPU the pose network runs once per person per
frame (twice with the flip test) on a few cores, so the small MMPose SimpleBaseline-MobileNetV2
(COCO AP 64.8) keeps a webcam interactive where HRNet-W32 would not: 84 ms against 308 ms per
person, crop and flipped crop at 256x192, float32 on two cores. On a GPU every person of a frame
goes through in one batch, and MMPose's HRNet-W48 DARK at 384x288 (COCO AP 77.2, the most
accurate checkpoint listed) is affordable. The person detector is YOLO11n on both: the only
plain COCO detector the manifest lists (YOLO11m-pose is the benchmark's reference).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from realtime.weights.fetch import Progress, fetch
from realtime.weights.manifest import WEIGHTS_DIR, Manifest, ManifestEntry

logger = logging.getLogger(__name__)

FETCH_COMMAND = "python app.py weights fetch --recommended"
DEMO_NOTICE = (
    "Demo weights in use: trained on synthetic figures only, to show every stage of the "
    "pipeline working; they do not pose real people. For real people: "
    f"`{FETCH_COMMAND}`"
)


@dataclass(frozen=True)
class Recommendation:
    """The manifest names to fetch for a machine, and why."""

    machine: str  # "cpu" or "gpu"
    pose: str
    detector: str
    why: str

    @property
    def names(self) -> tuple[str, str]:
        return self.pose, self.detector


RECOMMENDED = {
    "cpu": Recommendation(
        "cpu",
        "mmpose-mobilenetv2-256x192",
        "yolo11n",
        "no GPU: the small MobileNetV2 pose network (COCO AP 64.8) takes about a quarter of "
        "HRNet-W32's time per person on a CPU, which keeps a webcam interactive; YOLO11n "
        "finds the people",
    ),
    "gpu": Recommendation(
        "gpu",
        "mmpose-hrnet-w48-dark-384x288",
        "yolo11n",
        "a GPU: HRNet-W48 DARK at 384x288 (COCO AP 77.2, the most accurate listed), every "
        "person of a frame in one batch; YOLO11n finds the people",
    ),
}


def recommendation(device: str | None = None) -> Recommendation:
    """The pair for `device` ("cpu", "gpu", "cuda", "cuda:N"; None: this machine, gpu when CUDA
    is available)."""
    if device is None:
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return RECOMMENDED["cpu"]
    if device == "gpu" or device.startswith("cuda"):
        return RECOMMENDED["gpu"]
    raise ValueError(f"device must be cpu, gpu, cuda or cuda:N, got {device!r}")


def demo_entries(paths: Iterable[Path | str], manifest: Manifest) -> list[ManifestEntry]:
    """The demo manifest entries among the weight files `paths` (the pose and detector in use)."""
    found = []
    for path in paths:
        entry = manifest.for_file(Path(path).name)
        if entry is not None and entry.demo and entry not in found:
            found.append(entry)
    return found


def demo_notice(paths: Iterable[Path | str], manifest: Manifest) -> str | None:
    """`DEMO_NOTICE` when any of `paths` is a demo weight file, else None."""
    return DEMO_NOTICE if demo_entries(paths, manifest) else None


def fetch_recommended(
    manifest: Manifest,
    weights_dir: Path = WEIGHTS_DIR,
    device: str | None = None,
    progress: Callable[[ManifestEntry], Progress | None] = lambda entry: None,
) -> list[Path]:
    """Fetch (resumable, hash-checked, converted) the recommended pair for `device`.

    `progress(entry)` gives the byte-progress callback of each download. Returns the files the
    pipeline will use, pose first; the pipeline picks them over the demo weights by itself.
    """
    chosen = recommendation(device)
    logger.info("recommended for this machine (%s): %s", chosen.machine, chosen.why)
    paths = []
    for name in chosen.names:
        entry = manifest.get(name)
        paths.append(fetch(entry, weights_dir, progress=progress(entry)))
    return paths
