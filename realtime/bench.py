"""The FPS benchmark: time every stage and the whole loop, and the ultralytics YOLO-pose reference.

    python app.py bench --source clip.mp4 --frames 200 --warmup 20 --mode throughput --reference

Warm-up frames run first and are not timed; a clip shorter than warm-up + timed frames is played
again from its start (frame numbers and pts keep counting, so tracking sees a jump, not a rewind).
Two modes:

- `throughput`: a file processed as `app.py video` does it. A reader thread decodes ahead, the
  pipeline runs on the calling thread, render + encode run on a worker thread (overlapping the
  next frame's device work). Stage times: `decode` is how long the loop waited for a decoded
  frame (decoding itself runs ahead); detect .. fuse are wall times on the calling thread (on
  CUDA without `sync_timing` a stage may finish later than its timer says; their sum ends at the
  frame's one device->host copy, so it is exact); render / encode are measured on the worker.
  FPS counts from the first timed frame to the last one encoded (encoder flush included).
- `latency`: one frame at a time, as from a camera: decode, pipeline with `sync_timing=True`,
  render, encode, then the next frame; nothing overlaps, so each stage time is its own cost.

Latency is always "decoded frame -> poses on the host" (detect + crop + pose + refine + fuse).

People per frame drive the pose-stage cost. A random-weight detector finds a meaningless number
of boxes, so two options fix it (the detector still runs and is timed; its boxes are replaced):
`fixed_people=N` takes the detector's top N boxes, or N boxes tiled over the frame when it finds
fewer; `people_from_gt=FILE` takes the boxes of a `train.synthetic` video's ground-truth JSON.

`OUT/bench.json` holds: "device" (torch threads counted when timing ended), "cpu" (model, cores,
1/5/15-minute load average at the start), "versions", "config" (bench and pipeline options),
"pose_model", "source", "mode", "frames", "warmup", "total_s", "fps", "latency_ms" and "loop_ms"
(median / p95 / mean / max), "stages" ({stage: {median_ms, p95_ms, mean_ms, max_ms}}), "people"
(how they were chosen; per-frame counts into the pose stage and out of the pipeline), and
"reference" (ultralytics' FPS, latency and its own speed dict in ms) with "fps_ratio" = ours /
reference, or null. `OUT/bench.png` is a bar chart of the median ms per stage.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import av
import cv2
import numpy as np
import torch
from torch import Tensor

from realtime.assemble import (
    PipelineOptions,
    build_pipeline,
    default_pose_checkpoint,
    resolve_device,
)
from realtime.batch import OutputWorker
from realtime.detector import Detections, DetectorConfig, shipped_model_yaml
from realtime.offline import configure_offline
from realtime.pipeline import STAGES, FrameResult, PosePipeline, frame_share
from realtime.render import render_frame
from realtime.results import FramePoses
from realtime.samples import SYNTHETIC_WALK
from realtime.sinks import JsonlWriter, Mp4Writer
from realtime.sources import Frame, open_source

logger = logging.getLogger(__name__)

MODES = ("throughput", "latency")
LATENCY_STAGES = ("detect", "crop", "pose", "refine", "fuse")  # decoded frame -> poses
REFERENCE_SPEED = ("preprocess", "inference", "postprocess")


@dataclass(frozen=True)
class BenchConfig:
    """What to time and where to write the report.

    `frames` are timed after `warmup` untimed ones; `people_from_gt` (a ground-truth JSON of a
    `train.synthetic` video) and `fixed_people` (N) replace the detector's boxes, at most one.
    """

    source: Path = SYNTHETIC_WALK
    frames: int = 200
    warmup: int = 20
    mode: str = "throughput"
    out: Path = Path("bench")
    reference: bool = False
    reference_weights: str | Path = "yolo11n-pose.pt"
    people_from_gt: Path | None = None
    fixed_people: int | None = None

    def __post_init__(self) -> None:
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


# ----------------------------------------------------------------------------- people per frame


def tiled_boxes(count: int, height: int, width: int) -> Tensor:
    """`count` person-shaped boxes (about 1:2) on a grid over the frame, row by row.

    Returns:
        (count, 4) float32 x1, y1, x2, y2 in image pixels, inside the frame.
    """
    cols = min(count, max(1, round(float(np.sqrt(2.0 * count * width / height)))))
    rows = -(-count // cols)
    cell_w, cell_h = width / cols, height / rows
    index = torch.arange(count)
    x1 = (index % cols) * cell_w + 0.1 * cell_w
    y1 = torch.div(index, cols, rounding_mode="floor") * cell_h + 0.05 * cell_h
    return torch.stack((x1, y1, x1 + 0.8 * cell_w, y1 + 0.9 * cell_h), dim=1).float()


def load_ground_truth_boxes(path: Path, width: int, height: int) -> list[Tensor]:
    """Per-frame person boxes from a `train.synthetic` video's JSON (`frames[i][j]["bbox"]`).

    Returns:
        One (N_i, 4) float32 tensor per frame of the clip, x1, y1, x2, y2 in image pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    try:
        data = json.loads(path.read_text())
        frames = data["frames"]
        size = (int(data["width"]), int(data["height"]))
        boxes = [
            torch.tensor([p["bbox"] for p in people], dtype=torch.float32).reshape(-1, 4)
            for people in frames
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: not a train.synthetic ground-truth file (needs width, height and frames of "
            f'[{{"bbox": [x, y, w, h]}}, ...]): {err}'
        ) from err
    if size != (width, height):
        raise ValueError(
            f"{path} describes a {size[0]}x{size[1]} video but the source is {width}x{height}"
        )
    for b in boxes:
        b[:, 2:] += b[:, :2]  # x, y, w, h -> x1, y1, x2, y2
    return boxes


class PeopleOverride:
    """The pipeline's `people` hook: replaces the detector's boxes with a chosen set (the detector
    still runs, so its time is real).

    With neither `fixed` nor `ground_truth` it passes the detections through. Ground truth is
    indexed by the frame's place in the clip (`frame.index` modulo its length). Boxes it makes up
    get score 1, so the pipeline's rescoring keeps them.
    """

    def __init__(self, fixed: int | None = None, ground_truth: list[Tensor] | None = None) -> None:
        self.fixed = fixed
        self.ground_truth = ground_truth
        self.detected: list[int] = []  # boxes the detector itself found, per call

    def __call__(self, frame: Frame, found: Detections) -> Detections:
        boxes, scores = found
        self.detected.append(len(boxes))
        if self.ground_truth is not None:
            boxes = self.ground_truth[frame.index % len(self.ground_truth)]
            return Detections(boxes, torch.ones(len(boxes)))
        if self.fixed is not None:
            if len(boxes) >= self.fixed:  # detections come sorted by score, best first
                return Detections(boxes[: self.fixed], scores[: self.fixed])
            boxes = tiled_boxes(self.fixed, frame.image.shape[0], frame.image.shape[1])
            return Detections(boxes, torch.ones(self.fixed))
        return found


# ----------------------------------------------------------------------------- frames


class ClipLoop:
    """The frames of a video file, played again from the start as often as needed.

    `threaded` reads through `open_source` (a reader thread decoding ahead, as `app.py video`);
    otherwise frames are decoded on the calling thread when asked for. Frame index and pts keep
    counting across passes.
    """

    def __init__(self, path: Path, threaded: bool) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"benchmark source not found (a video file): {self.path}")
        probe = open_source(self.path, realtime=False, queue_size=1)  # raises on a bad file
        self.info = probe.info
        probe.close()
        self.threaded = threaded
        self.passes = 0
        self._frames = self._generate()

    def __iter__(self) -> ClipLoop:
        return self

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()

    def _generate(self) -> Iterator[Frame]:
        index = 0
        while True:
            self.passes += 1
            first = index
            for image in self._decode():
                yield Frame(index, index / self.info.fps, image, time.monotonic())
                index += 1
            if index == first:
                raise ValueError(f"{self.path}: no frame could be decoded")

    def _decode(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB images of one pass over the clip."""
        if self.threaded:
            with open_source(self.path, realtime=False) as source:
                for frame in source:
                    yield frame.image
            return
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # as the reader thread of `open_source` decodes
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")


# ----------------------------------------------------------------------------- timing


@dataclass
class _Record:
    """One timed frame: stage ms (render/encode may be filled in later by the worker)."""

    timings: dict[str, float]
    batch: int
    latency_ms: float
    loop_ms: float
    people: int
    poses: int


Runner = Callable[[Iterator[Frame]], Iterator[FrameResult]]


def _throughput(run: Runner, frames: ClipLoop, config: BenchConfig, tmp: Path):
    """Batch processing with render + encode on a worker thread; returns records and seconds.

    `run` turns frames into results (the pipeline's `stream`, or the reference's). A micro-batch
    of B frames shares its stage times: each frame is charged 1/B of them."""
    records: list[_Record] = []

    def feed(count: int, keep: bool) -> None:
        worker = OutputWorker(video, jsonl, render_frame)
        pending: list[FrameResult] = []
        try:
            last = time.perf_counter()
            for result in run(islice(frames, count)):
                worker.put(result)
                pending.append(result)
                if len(pending) < result.batch:
                    continue
                now = time.perf_counter()
                if keep:
                    loop_ms = (now - last) * 1000 / len(pending)
                    records.extend(_record(r, loop_ms) for r in pending)
                pending, last = [], now
        finally:
            worker.close()

    with (
        Mp4Writer(tmp / "bench.mp4", frames.info.fps) as video,
        JsonlWriter(tmp / "bench.jsonl") as jsonl,
    ):
        if config.warmup:
            feed(config.warmup, keep=False)
        logger.info("timing %d frames (throughput)", config.frames)
        start = time.perf_counter()
        feed(config.frames, keep=True)
    return records, time.perf_counter() - start


def _latency(run: Runner, frames: ClipLoop, config: BenchConfig, tmp: Path):
    """One frame at a time: decode, poses, render, encode, then the next frame."""
    records: list[_Record] = []
    with (
        Mp4Writer(tmp / "bench.mp4", frames.info.fps) as video,
        JsonlWriter(tmp / "bench.jsonl") as jsonl,
    ):
        fps = None
        start = time.perf_counter()
        for i in range(config.warmup + config.frames):
            if i == config.warmup:
                logger.info("timing %d frames (latency)", config.frames)
                start = time.perf_counter()
            t0 = time.perf_counter()
            frame = next(frames)
            t1 = time.perf_counter()
            (result,) = run(iter([frame]))
            t2 = time.perf_counter()
            image = render_frame(frame.image, result.poses, fps, result.latency_ms)
            t3 = time.perf_counter()
            video.write(image, frame.pts)
            jsonl.write(result.poses)
            t4 = time.perf_counter()
            fps = 1.0 / max(t4 - t0, 1e-9)
            result.timings = {
                **result.timings, "decode": (t1 - t0) * 1000,
                "render": (t3 - t2) * 1000, "encode": (t4 - t3) * 1000,
            }  # fmt: skip
            if i >= config.warmup:
                records.append(_record(result, (t4 - t0) * 1000))
    return records, time.perf_counter() - start


def _record(result: FrameResult, loop_ms: float) -> _Record:
    # The worker adds render/encode (per frame) to this same dict later; keep the dict. The other
    # stages ran once for the frame's micro-batch.
    return _Record(result.timings, result.batch, result.latency_ms, loop_ms, result.people,
                   len(result.poses))  # fmt: skip


def _stage_ms(record: _Record, stage: str) -> float:
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


# ----------------------------------------------------------------------------- reference


def check_reference_weights(weights: str | Path) -> str:
    """`weights` as a string if it is a local file or a model yaml ultralytics ships."""
    configure_offline()  # before ultralytics is imported
    name = str(weights)
    if "://" in name or not (Path(name).is_file() or shipped_model_yaml(name)):
        raise FileNotFoundError(
            f"reference weights {name!r} not found: pass a local YOLO-pose .pt, or a model yaml "
            "ultralytics ships (e.g. yolo11n-pose.yaml, random weights) for timing only"
        )
    return name


class YoloPoseReference:
    """ultralytics' YOLO-pose predictor doing our job: one `predict` per frame, its keypoints as a
    `FramePoses` (so the same worker draws the skeletons and encodes the mp4 and JSON Lines).

    It gets the detector's input size, thresholds and precision. Stage times are ultralytics' own
    speed dict (preprocess, inference, postprocess), in ms.
    """

    def __init__(
        self, weights: str | Path, device: torch.device, detection: DetectorConfig
    ) -> None:
        configure_offline()  # before ultralytics is imported
        from ultralytics import YOLO
        from ultralytics.cfg import DEFAULT_CFG_DICT

        name = check_reference_weights(weights)
        self.weights = name
        self.model = YOLO(name)
        if self.model.task != "pose":
            raise ValueError(
                f"reference weights {name!r} are a {self.model.task!r} model, not 'pose'"
            )
        half = detection.half and device.type == "cuda"
        # ultralytics 8.4 replaced `half` with `quantize`.
        precision = (
            {"quantize": 16 if half else None} if "quantize" in DEFAULT_CFG_DICT else {"half": half}
        )
        self.args = dict(
            imgsz=detection.imgsz, conf=detection.conf, iou=detection.iou,
            max_det=detection.max_det, device=str(device), verbose=False, save=False, **precision,
        )  # fmt: skip

    def stream(self, frames: Iterator[Frame]) -> Iterator[FrameResult]:
        for frame in frames:
            threads = torch.get_num_threads()
            bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)  # ultralytics reads BGR
            result = self.model.predict(bgr, **self.args)[0]
            torch.set_num_threads(threads)  # its first CPU call sets cpu_count - 1 threads
            n = len(result.boxes)
            keypoints = result.keypoints.data.float().cpu() if n else torch.zeros(0, 17, 3)
            poses = FramePoses(
                frame.index, frame.pts, result.boxes.xyxy.float().cpu(),
                result.boxes.conf.float().cpu(), keypoints, torch.full((n,), -1),
            )  # fmt: skip
            timings = {k: float(result.speed[k]) for k in REFERENCE_SPEED}
            yield FrameResult(frame, poses, timings, batch=1, people=n)


# ----------------------------------------------------------------------------- the benchmark


def run_benchmark(
    options: PipelineOptions,
    config: BenchConfig,
    pipeline: PosePipeline | None = None,
    table: TextIO | None = None,
) -> dict[str, Any]:
    """Time the pipeline built from `options` (or the given one) on `config.source`.

    Writes `config.out/bench.json` and `config.out/bench.png`, writes the table to `table`
    (stdout by default) and returns the report (the JSON's content).
    """
    device = torch.device(resolve_device(options.device))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None  # a shared machine shows here
    latency_mode = config.mode == "latency"
    frames = ClipLoop(config.source, threaded=not latency_mode)
    ground_truth = None
    if config.people_from_gt is not None:
        ground_truth = load_ground_truth_boxes(
            config.people_from_gt, frames.info.width, frames.info.height
        )
        if frames.info.frame_count and len(ground_truth) < frames.info.frame_count:
            raise ValueError(
                f"{config.people_from_gt} has {len(ground_truth)} frames, "
                f"{config.source} has {frames.info.frame_count}"
            )
    if config.reference:
        check_reference_weights(config.reference_weights)  # before minutes of timing, not after
    config.out.mkdir(parents=True, exist_ok=True)
    base = pipeline or build_pipeline(options)
    people = PeopleOverride(config.fixed_people, ground_truth)
    stage_config = dataclasses.replace(
        base.config, sync_timing=latency_mode or base.config.sync_timing
    )
    bench = PosePipeline(base.detector, base.estimator, base.temporal, stage_config)
    bench.reset()
    run = _latency if latency_mode else _throughput
    try:
        with tempfile.TemporaryDirectory(prefix="ccm-bench-") as tmp:
            runner = functools.partial(bench.stream, people=people, live=latency_mode)
            records, seconds = run(runner, frames, config, Path(tmp))
    finally:
        frames.close()
    report = _report(options, config, base, device, frames, records, seconds, people)
    report["cpu"]["load_average_at_start"] = list(load) if load else None
    # What actually ran, where the options left it to the pipeline or to the mode.
    report["config"]["pipeline"]["detection"]["weights"] = report["pose_model"]["detector"]
    report["config"]["pipeline"]["detection"]["imgsz"] = base.detector.config.imgsz
    report["config"]["pipeline"]["pipeline"]["sync_timing"] = stage_config.sync_timing
    if config.reference:
        logger.info("timing the reference %s", config.reference_weights)
        reference = YoloPoseReference(config.reference_weights, device, base.detector.config)
        ref_frames = ClipLoop(config.source, threaded=not latency_mode)
        try:
            with tempfile.TemporaryDirectory(prefix="ccm-bench-ref-") as tmp:
                ref_records, ref_seconds = run(reference.stream, ref_frames, config, Path(tmp))
        finally:
            ref_frames.close()
        report["reference"] = _reference_report(reference, ref_records, ref_seconds)
        report["fps_ratio"] = report["fps"] / report["reference"]["fps"]
    (config.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_stages(report, config.out / "bench.png")
    (table or sys.stdout).write(format_table(report) + "\n")
    logger.info("wrote %s and %s", config.out / "bench.json", config.out / "bench.png")
    return report


def _report(
    options: PipelineOptions,
    config: BenchConfig,
    pipeline: PosePipeline,
    device: torch.device,
    frames: ClipLoop,
    records: list[_Record],
    seconds: float,
    people: PeopleOverride,
) -> dict[str, Any]:
    stages = {s: summarize([_stage_ms(r, s) for r in records]) for s in STAGES}
    if config.people_from_gt is not None:
        chosen = {"source": "ground-truth", "ground_truth": str(config.people_from_gt)}
    elif config.fixed_people is not None:
        chosen = {"source": "fixed", "fixed": config.fixed_people}
    else:
        chosen = {"source": "detector"}
    counts = [r.people for r in records]
    pose = pipeline.estimator.pose
    info = frames.info
    return {
        "device": _device_info(device),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count()},
        "versions": _versions(),
        "config": {"bench": _plain(config), "pipeline": _plain(options)},
        "pose_model": {
            "checkpoint": str(options.pose or default_pose_checkpoint()),
            "arch": pose.arch,
            "input_size": list(pose.input_size),
            "detector": str(getattr(getattr(pipeline.detector, "config", None), "weights", "")),
        },
        # What the "auto" choices resolved to on this machine.
        "profile": {
            "pose": pipeline.estimator.describe(),
            "detector_precision": getattr(pipeline.detector, "precision", None),
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
        "reference": None,
        "fps_ratio": None,
    }


def _reference_report(
    reference: YoloPoseReference, records: list[_Record], seconds: float
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
        "stages": {s: summarize([_stage_ms(r, s) for r in records]) for s in stages},
        "people_per_frame": float(np.mean([r.people for r in records])),
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
        "platform": platform.platform(),
    }


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


# ----------------------------------------------------------------------------- output


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
    for stage, s in report["stages"].items():
        lines.append(f"{stage:<10}{s['median_ms']:>11.2f}{s['p95_ms']:>10.2f}")
    loop, lat = report["loop_ms"], report["latency_ms"]
    lines += [
        f"{'loop':<10}{loop['median_ms']:>11.2f}{loop['p95_ms']:>10.2f}",
        f"end-to-end {report['fps']:.2f} fps ({report['frames']} frames in "
        f"{report['total_s']:.2f} s); latency p50 {lat['median_ms']:.1f} ms, "
        f"p95 {lat['p95_ms']:.1f} ms; {people['per_frame']:.2f} people/frame "
        f"({people['poses_per_frame']:.2f} poses out)",
    ]
    ref = report.get("reference")
    if ref:
        lines.append(f"{'reference':<12}{'median ms':>11}{'p95 ms':>10}")
        for stage, v in ref["stages"].items():
            lines.append(f"{stage:<12}{v['median_ms']:>11.2f}{v['p95_ms']:>10.2f}")
        lines += [
            f"reference {ref['weights']}{' (random weights)' if ref['random_weights'] else ''}: "
            f"{ref['fps']:.2f} fps; latency p50 {ref['latency_ms']['median_ms']:.1f} ms, "
            f"p95 {ref['latency_ms']['p95_ms']:.1f} ms; "
            f"{ref['people_per_frame']:.2f} people/frame",
            f"ours / reference fps: {report['fps_ratio']:.2f}",
        ]
    return "\n".join(lines)


def plot_stages(report: dict[str, Any], path: Path) -> None:
    """Bar chart of the median ms per stage (p95 as a whisker), reference stages beside ours."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels = list(report["stages"])
    medians = [report["stages"][s]["median_ms"] for s in labels]
    p95 = [report["stages"][s]["p95_ms"] for s in labels]
    colors = ["tab:blue"] * len(labels)
    ref = report.get("reference")
    if ref:
        for k, v in ref["stages"].items():
            labels.append(f"ref {k}")
            medians.append(v["median_ms"])
            p95.append(v["p95_ms"])
            colors.append("tab:orange")
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(labels) + 1.5))
    y = np.arange(len(labels))
    whisker = np.maximum(np.asarray(p95) - np.asarray(medians), 0.0)
    ax.barh(y, medians, xerr=[np.zeros_like(whisker), whisker], color=colors, capsize=3)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms per frame (median; whisker to p95)")
    title = (
        f"{report['mode']} on {report['device']['name']}: {report['fps']:.2f} fps, "
        f"latency p50 {report['latency_ms']['median_ms']:.1f} ms"
    )
    if ref:
        title += f"\nreference {Path(ref['weights']).name}: {ref['fps']:.2f} fps"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
