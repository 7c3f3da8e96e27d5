"""Live-mode settings compared on held-out synthetic clips: accuracy and per-frame latency.

    python -m train.live_study clips --out data/live --seeds 81 82 83 84 85 86
    python -m train.live_study table --clips data/live

`clips` writes 960x540 clips at 15 fps with four walking figures (the seeds must be ones no test
and no tuning used). `table` runs every setting of `SETTINGS` over every clip as a camera's frames
are run (`PosePipeline.stream(live=True)`: one frame at a time, the next only when it is done, so
none is dropped and the scores do not depend on the machine's speed), and prints keypoint AP, AP50
and AR (pycocotools, the clips pooled, `train.video_eval`'s ground truth), how often the detector
and the flip test ran, and the per-frame latency (decoded frame -> poses on the host) p50 / p95.
The settings share the loaded models and run clip by clip in turn, so a busy machine slows them
alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from realtime.device import cpu_threads
from realtime.io.sources import open_source
from realtime.stream.assemble import PipelineSpec, build_live_pipeline, build_pipeline
from realtime.stream.pipeline import PipelineConfig, PosePipeline
from realtime.temporal.fusion import TemporalConfig, TemporalFusion
from train.coco_metrics import coco_evaluate, format_table
from train.synthetic.videos import VideoConfig, generate_video
from train.video_eval import FRAME_STRIDE, coco_results, video_ground_truth

log = logging.getLogger(__name__)

CLIP = VideoConfig(width=960, height=540, fps=15, seconds=4.0, num_people=4)

# label -> (the networks' backend and precision, the pipeline stage's config in live mode);
# refinement and temporal fusion as the defaults
SETTINGS: dict[str, tuple[str, str, PipelineConfig]] = {
    "PyTorch, detect every frame, flip every frame (before)": (
        "eager", "auto", PipelineConfig(det_every=1, live_flip="always"),
    ),
    "OpenVINO, detect every frame, flip every frame": (
        "openvino", "auto", PipelineConfig(det_every=1, live_flip="always"),
    ),
    "OpenVINO int8, detect every frame, flip every frame": (
        "openvino", "int8", PipelineConfig(det_every=1, live_flip="always"),
    ),
    "OpenVINO, detect every 3rd, flip every frame": (
        "openvino", "auto", PipelineConfig(det_every=3, live_flip="always"),
    ),
    "OpenVINO, detect every 3rd, flip between detections": (
        "openvino", "auto", PipelineConfig(det_every=3, live_flip="between"),
    ),
    "OpenVINO, detect every 3rd, no flip": (
        "openvino", "auto", PipelineConfig(det_every=3, live_flip="never"),
    ),
    "live defaults": ("auto", "auto", PipelineConfig()),
}  # fmt: skip


def make_clips(out: Path, seeds: Sequence[int]) -> list[Path]:
    """OUT/walk_s{seed}.mp4 + .json per seed; the clips' paths."""
    return [generate_video(out / f"walk_s{seed}.mp4", CLIP, seed, 0).video for seed in seeds]


def run_live(pipeline: PosePipeline, clip: Path) -> tuple[list, list[float], dict[str, int]]:
    """One clip through a fresh stream of `pipeline`, frame by frame: its poses (NumPy), each
    frame's latency in ms, and how many frames were detected and flipped."""
    pipeline.reset()
    poses, latency = [], []
    source = open_source(str(clip), realtime=False)
    try:
        for result in pipeline.stream(source, live=True):
            poses.append(result.poses.numpy())
            latency.append(result.latency_ms)
    finally:
        source.close()
    s = pipeline.state
    return poses, latency, {"frames": s.frames, "detected": s.detections, "flipped": s.flips}


def table(clips: Sequence[Path], spec: PipelineSpec | None = None) -> list[list[str]]:
    """Rows (setting, AP, AP50, AR, detected, flipped, latency p50, p95) over `clips`."""
    spec = spec or PipelineSpec()
    models = {(backend, precision) for backend, precision, _ in SETTINGS.values()}
    bases = {key: _base(spec, *key) for key in models}  # each loaded once, shared by its settings
    pipelines = {
        label: bases[backend, precision].sharing_models(
            config=config, temporal=_temporal(spec.temporal)
        )
        for label, (backend, precision, config) in SETTINGS.items()
    }
    coco = video_ground_truth([c.with_suffix(".json") for c in clips])
    results = {label: [] for label in SETTINGS}
    latency = {label: [] for label in SETTINGS}
    counts = {label: {"frames": 0, "detected": 0, "flipped": 0} for label in SETTINGS}
    for i, clip in enumerate(clips):
        for label, pipeline in pipelines.items():  # in turn, so load slows every setting alike
            # PyTorch's threads as `build_pipeline` leaves them for this backend
            openvino = pipeline.estimator.backend == "openvino"
            torch.set_num_threads(1 if openvino else cpu_threads())
            poses, ms, seen = run_live(pipeline, clip)
            results[label] += coco_results(poses, i * FRAME_STRIDE)
            latency[label] += ms
            for key in counts[label]:
                counts[label][key] += seen[key]
            log.info("%s: %s done", clip.name, label)
    rows = []
    for label in SETTINGS:
        metrics = coco_evaluate(coco, results[label])
        frames = counts[label]["frames"]
        rows.append([
            label, f"{100 * metrics['AP']:.1f}", f"{100 * metrics['AP50']:.1f}",
            f"{100 * metrics['AR']:.1f}", f"{counts[label]['detected'] / frames:.2f}",
            f"{counts[label]['flipped'] / frames:.2f}",
            f"{np.percentile(latency[label], 50):.1f}", f"{np.percentile(latency[label], 95):.1f}",
        ])  # fmt: skip
    return rows


def _base(spec: PipelineSpec, backend: str, precision: str) -> PosePipeline:
    """The models for one (backend, precision) of `SETTINGS`; ("auto", "auto") as live sources
    get them (`build_live_pipeline`: int8 on a CPU)."""
    spec = dataclasses.replace(
        spec,
        engine=dataclasses.replace(spec.engine, backend=backend, precision=precision),
        detection=dataclasses.replace(
            spec.detection, backend="torch" if backend == "eager" else backend, precision=precision
        ),
    )
    if (backend, precision) == ("auto", "auto"):
        return build_live_pipeline(spec)[0]
    return build_pipeline(spec)


def _temporal(config: TemporalConfig) -> TemporalFusion | None:
    return TemporalFusion(config) if config.method != "none" else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.live_study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("clips", help="write the held-out clips")
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--seeds", type=int, nargs="+", required=True)
    show = sub.add_parser("table", help="run every setting over the clips")
    show.add_argument("--clips", type=Path, required=True, help="folder of clips + .json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "clips":
        for path in make_clips(args.out, args.seeds):
            print(path)
        return
    clips = sorted(args.clips.glob("*.mp4"))
    if not clips:
        parser.exit(2, f"error: no clips under {args.clips}\n")
    header = ("setting", "AP", "AP50", "AR", "detected", "flipped", "p50 ms", "p95 ms")
    print(format_table(header, table(clips)))


if __name__ == "__main__":
    main()
