"""The benchmark's report: per-frame records summarised into `bench.json`, a text table and a plot.

`OUT/bench.json` holds: "device" (torch threads counted when timing ended), "cpu" (model, cores,
1/5/15-minute load average at the start), "versions", "config" (bench and pipeline options),
"pose_model", "demo_weights" (when the demo weights were timed, the notice with the command that
fetches real-person weights; else null), "source", "mode", "frames", "warmup", "total_s", "fps",
"latency_ms" and "loop_ms" (median / p95 / mean / max), "stages" ({stage: {median_ms, p95_ms,
mean_ms, max_ms}}), "people" (how they were chosen; per-frame counts into the pose stage and out
of the pipeline), and, with `--reference`:

- "references": one entry per YOLO-pose peer, in the order given: "weights", "random_weights",
  "frames", "total_s", "fps", "latency_ms", "loop_ms", "stages" (ultralytics' own speed dict,
  preprocess / inference / postprocess, then decode / render / encode as ours), "people_per_frame",
  "fps_ratio" (ours / the peer's fps: above 1, ours is faster) and "latency_ratio" ({"median",
  "p95"}: ours / the peer's latency at p50 and p95: below 1, ours answers sooner);
- "reference" and "fps_ratio": the first peer's entry and its fps_ratio, as before there were
  several peers.

Without `--reference`, "references" is [] and "reference" / "fps_ratio" are null. `OUT/bench.png`
has one panel per pipeline (ours, then each peer) on one ms axis: the median ms per stage, a
whisker to p95, fps and latency in each panel's title.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch

from realtime.bench.config import BenchConfig
from realtime.bench.frames import ClipLoop, PeopleOverride
from realtime.bench.reference import REFERENCE_SPEED, YoloPoseReference
from realtime.stream.assemble import PipelineSpec, default_pose_checkpoint
from realtime.stream.pipeline import PosePipeline
from realtime.stream.results import STAGES, frame_share
from realtime.weights.manifest import WEIGHTS_DIR, load_manifest, manifest_path
from realtime.weights.recommended import demo_notice


@dataclass
class FrameRecord:
    """One timed frame: stage ms (render/encode may be filled in later by the worker)."""

    timings: dict[str, float]
    batch: int
    latency_ms: float
    loop_ms: float
    people: int
    poses: int


def stage_ms(record: FrameRecord, stage: str) -> float:
    return frame_share(record.timings, record.batch, stage)


def summarize(values_ms: list[float]) -> dict[str, float]:
    """Median, 95th percentile (linear interpolation), mean and max of a list of ms."""
    a = np.asarray(values_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
    }


def build_report(
    options: PipelineSpec,
    config: BenchConfig,
    pipeline: PosePipeline,
    device: torch.device,
    frames: ClipLoop,
    records: list[FrameRecord],
    seconds: float,
    people: PeopleOverride,
) -> dict[str, Any]:
    stages = {s: summarize([stage_ms(r, s) for r in records]) for s in STAGES}
    if config.people_from_gt is not None:
        chosen = {"source": "ground-truth", "ground_truth": str(config.people_from_gt)}
    elif config.fixed_people is not None:
        chosen = {"source": "fixed", "fixed": config.fixed_people}
    else:
        chosen = {"source": "detector"}
    counts = [r.people for r in records]
    pose = pipeline.estimator.pose
    info = frames.info
    checkpoint = str(options.pose or default_pose_checkpoint())
    detector = str(getattr(getattr(pipeline.detector, "config", None), "weights", ""))
    return {
        "device": _device_info(device),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count()},
        "versions": _versions(),
        "config": {"bench": _plain(config), "pipeline": _plain(options)},
        "pose_model": {
            "checkpoint": checkpoint,
            "arch": pose.arch,
            "input_size": list(pose.input_size),
            "detector": detector,
        },
        "demo_weights": demo_notice(
            (checkpoint, detector), load_manifest(manifest_path(WEIGHTS_DIR))
        ),
        # What the "auto" choices resolved to on this machine.
        "profile": {
            "pose": pipeline.estimator.describe(),
            "detector_precision": getattr(pipeline.detector, "precision", None),
            "detector_backend": getattr(pipeline.detector, "backend", None),
            "batch_size": pipeline.config.batch_size,
        },
        "source": {
            "path": str(config.source),
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "frame_count": info.frame_count,
            "passes": frames.passes,
        },  # fmt: skip
        "mode": config.mode,
        "frames": len(records),
        "warmup": config.warmup,
        "total_s": seconds,
        "fps": len(records) / seconds,
        "latency_ms": summarize([r.latency_ms for r in records]),
        "loop_ms": summarize([r.loop_ms for r in records]),
        "stages": stages,
        "people": {
            **chosen,
            "per_frame": float(np.mean(counts)),
            "min": int(min(counts)),
            "max": int(max(counts)),
            "poses_per_frame": float(np.mean([r.poses for r in records])),
            "detector_boxes_per_call": float(np.mean(people.detected)) if people.detected else 0.0,
        },
        "references": [],
        "reference": None,
        "fps_ratio": None,
    }


def reference_report(
    reference: YoloPoseReference, records: list[FrameRecord], seconds: float
) -> dict[str, Any]:
    stages = (*REFERENCE_SPEED, "decode", "render", "encode")
    return {
        "weights": reference.weights,
        "random_weights": Path(reference.weights).suffix in (".yaml", ".yml"),
        "frames": len(records),
        "total_s": seconds,
        "fps": len(records) / seconds,
        "latency_ms": summarize([r.latency_ms for r in records]),
        "loop_ms": summarize([r.loop_ms for r in records]),
        "stages": {s: summarize([stage_ms(r, s) for r in records]) for s in stages},
        "people_per_frame": float(np.mean([r.people for r in records])),
    }


def compare_with_ours(report: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """`peer` (a `reference_report`) with "fps_ratio" and "latency_ratio", ours / the peer's."""
    ours, theirs = report["latency_ms"], peer["latency_ms"]
    return {
        **peer,
        "fps_ratio": report["fps"] / peer["fps"],
        "latency_ratio": {
            "median": ours["median_ms"] / theirs["median_ms"],
            "p95": ours["p95_ms"] / theirs["p95_ms"],
        },
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return {"type": "cuda", "name": name, "cuda": torch.version.cuda}
    return {"type": device.type, "name": cpu_model(), "torch_threads": torch.get_num_threads()}


def _versions() -> dict[str, str]:
    import torchvision
    import ultralytics

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ultralytics": ultralytics.__version__,
        "av": av.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "openvino": _openvino_version(),
        "platform": platform.platform(),
    }


def _openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def _plain(value: Any) -> Any:
    """Dataclasses, paths and tuples -> JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table: median and p95 ms per stage, then the end-to-end numbers."""
    people = report["people"]
    how = {"detector": "from the detector", "fixed": f"fixed at {people.get('fixed')}"}.get(
        people["source"], f"from {people.get('ground_truth')}"
    )
    pose = report["pose_model"]
    src = report["source"]
    lines = [
        f"{report['mode']}: {report['frames']} frames after {report['warmup']} warm-up on "
        f"{report['device']['type']} ({report['device']['name']})",
        f"pose {pose['arch']} {pose['input_size'][0]}x{pose['input_size'][1]}, "
        f"source {Path(src['path']).name} {src['width']}x{src['height']}, people {how}",
        f"{'stage':<10}{'median ms':>11}{'p95 ms':>10}",
    ]
    if report.get("demo_weights"):
        lines.insert(0, report["demo_weights"])
    for stage, s in report["stages"].items():
        lines.append(f"{stage:<10}{s['median_ms']:>11.2f}{s['p95_ms']:>10.2f}")
    loop, lat = report["loop_ms"], report["latency_ms"]
    lines += [
        f"{'loop':<10}{loop['median_ms']:>11.2f}{loop['p95_ms']:>10.2f}",
        f"end-to-end {report['fps']:.2f} fps ({report['frames']} frames in "
        f"{report['total_s']:.2f} s); latency p50 {lat['median_ms']:.1f} ms, "
        f"p95 {lat['p95_ms']:.1f} ms; {people['per_frame']:.2f} people/frame "
        f"({people['poses_per_frame']:.2f} poses out)",
        f"graphs compiled after warm-up: {report.get('graphs_compiled_after_warmup')}; peak "
        f"device memory MiB: {_number(report['device'].get('peak_memory_mb'))}; host syncs per "
        f"frame: {_number(report.get('host_syncs_per_frame'))}",
    ]
    peers = report.get("references") or []
    if peers:
        lines += ["", *peer_table(report, peers)]
    return "\n".join(lines)


def peer_table(report: dict[str, Any], peers: list[dict[str, Any]]) -> list[str]:
    """Ours and every peer side by side: median / p95 ms per stage ("-" where a pipeline has no
    such stage), loop and latency, fps, ours / peer; then one line per peer naming its weights."""
    names = ["ours", *(Path(p["weights"]).name for p in peers)]
    width = max(20, *(len(n) + 2 for n in names))
    pipelines = [report, *peers]
    # ours in order, the peers' own stages before the render and encode every pipeline ends with
    tail = ("render", "encode")
    stages = [s for s in dict.fromkeys(s for p in pipelines for s in p["stages"]) if s not in tail]
    stages += [s for s in tail if any(s in p["stages"] for p in pipelines)]

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<15}" + "".join(f"{c:>{width}}" for c in cells)

    def ms(stats: dict[str, float] | None) -> str:
        return "-" if stats is None else f"{stats['median_ms']:.2f} / {stats['p95_ms']:.2f}"

    lines = [
        "ours and the YOLO-pose peers on the same frames: ms median / p95; ours / peer",
        row("stage", names),
        *(row(s, [ms(p["stages"].get(s)) for p in pipelines]) for s in stages),
        row("loop", [ms(p["loop_ms"]) for p in pipelines]),
        row("latency", [ms(p["latency_ms"]) for p in pipelines]),
        row("fps", [f"{p['fps']:.2f}" for p in pipelines]),
        row("fps ratio", ["-", *(f"{p['fps_ratio']:.2f}" for p in peers)]),
        row("latency ratio", ["-", *(_ratios(p["latency_ratio"]) for p in peers)]),
    ]
    for peer in peers:
        lat = peer["latency_ms"]
        lines.append(
            f"peer {peer['weights']}{' (random weights)' if peer['random_weights'] else ''}: "
            f"{peer['fps']:.2f} fps; latency p50 {lat['median_ms']:.1f} ms, p95 "
            f"{lat['p95_ms']:.1f} ms; {peer['people_per_frame']:.2f} people/frame; ours / peer "
            f"fps: {peer['fps_ratio']:.2f}"
        )
    return lines


def _ratios(ratio: dict[str, float]) -> str:
    return f"{ratio['median']:.2f} / {ratio['p95']:.2f}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def plot_stages(report: dict[str, Any], path: Path) -> None:
    """One panel per pipeline, side by side on one ms axis: ours, then each peer in order; bars
    are the median ms per stage with a whisker to p95, titles give fps and latency p50 / p95."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    peers = report.get("references") or []
    pose = report["pose_model"]
    ours = f"ours: {pose['arch']} {pose['input_size'][0]}x{pose['input_size'][1]}"
    pipelines = [(ours, report, None), *((Path(p["weights"]).name, p, p) for p in peers)]
    colors = plt.get_cmap("tab10").colors
    most = max(len(p["stages"]) for _, p, _ in pipelines)
    fig, axes = plt.subplots(
        1, len(pipelines), sharex=True, squeeze=False,
        figsize=(max(8.0, 4.2 * len(pipelines)), 0.4 * most + 2.2),
    )  # fmt: skip
    for i, (ax, (name, timed, peer)) in enumerate(zip(axes[0], pipelines, strict=True)):
        labels = list(timed["stages"])
        medians = np.asarray([timed["stages"][s]["median_ms"] for s in labels])
        p95 = np.asarray([timed["stages"][s]["p95_ms"] for s in labels])
        whisker = np.maximum(p95 - medians, 0.0)
        y = np.arange(len(labels))
        ax.barh(y, medians, xerr=[np.zeros_like(whisker), whisker], color=colors[i % 10],
                capsize=3)  # fmt: skip
        ax.set_yticks(y, labels)
        ax.set_ylim(most - 0.5, -0.5)  # same bar height in every panel, first stage on top
        ax.set_xlabel("ms per frame")
        lat = timed["latency_ms"]
        fps = f"{timed['fps']:.2f} fps"
        if peer:
            name += " (random weights)" if peer["random_weights"] else ""
            fps += f", ours / peer {peer['fps_ratio']:.2f}"
        latency = f"latency p50 {lat['median_ms']:.1f} / p95 {lat['p95_ms']:.1f} ms"
        ax.set_title(f"{name}\n{fps}\n{latency}", fontsize=9)
    fig.suptitle(
        f"{report['mode']} on {report['device']['name']}, {report['frames']} frames: "
        "median ms per stage, whisker to p95",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
