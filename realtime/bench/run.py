"""The FPS benchmark: time every stage and the whole loop, and the ultralytics YOLO-pose reference.

    python app.py bench --source clip.mp4 --frames 200 --warmup 20 --mode throughput --reference
    python app.py bench --reference --reference-weights yolo11n-pose.pt yolo26n-pose.pt

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

With `--reference`, each YOLO-pose peer named by `--reference-weights` is timed after ours, one
after the other, each on the clip from its start, with the same frames, mode and detector settings.

The run is here; what it feeds the pipeline is `realtime.bench.frames`, the YOLO-pose reference
`realtime.bench.reference`, and `OUT/bench.json` / `OUT/bench.png` are `realtime.bench.report`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import torch

from realtime.batch.videos import OutputWorker
from realtime.bench.config import BenchConfig
from realtime.bench.counters import (
    compiled_graphs,
    peak_memory_mb,
    reset_peak_memory,
    syncs_per_frame,
)
from realtime.bench.frames import ClipLoop, PeopleOverride, load_ground_truth_boxes
from realtime.bench.reference import YoloPoseReference, check_reference_weights
from realtime.bench.report import (
    FrameRecord,
    build_report,
    compare_with_ours,
    format_table,
    plot_stages,
    reference_report,
)
from realtime.device import resolve_device
from realtime.io.frames import Frame
from realtime.io.sinks import JsonlWriter, Mp4Writer
from realtime.render import render_frame
from realtime.stream.assemble import PipelineSpec, build_live_pipeline, build_pipeline
from realtime.stream.pipeline import PosePipeline
from realtime.stream.results import FrameResult

logger = logging.getLogger(__name__)


Runner = Callable[[Iterator[Frame]], Iterator[FrameResult]]
# `_throughput` or `_latency`: records and seconds of `config.frames` timed frames
Timer = Callable[[Runner, ClipLoop, BenchConfig, Path], tuple[list[FrameRecord], float]]
SYNC_FRAMES = 12  # frames run after timing with CUDA's sync debug mode on, to count host syncs


def _throughput(run: Runner, frames: ClipLoop, config: BenchConfig, tmp: Path):
    """Batch processing with render + encode on a worker thread; returns records and seconds.

    `run` turns frames into results (the pipeline's `stream`, or the reference's). A micro-batch
    of B frames shares its stage times: each frame is charged 1/B of them."""
    records: list[FrameRecord] = []

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
    records: list[FrameRecord] = []
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


def _record(result: FrameResult, loop_ms: float) -> FrameRecord:
    # The worker adds render/encode (per frame) to this same dict later; keep the dict. The other
    # stages ran once for the frame's micro-batch.
    return FrameRecord(result.timings, result.batch, result.latency_ms, loop_ms, result.people,
                   len(result.poses))  # fmt: skip


def _time_peer(
    weights: str | Path, config: BenchConfig, device: torch.device, base: PosePipeline, run: Timer
) -> dict[str, Any]:
    """One YOLO-pose peer on the frames ours ran on, in the same mode: its `reference_report`.

    The model is built here, after ours was timed, and dropped on return: it is not held in
    memory while our pipeline or the next peer is timed."""
    logger.info("timing the reference %s", weights)
    reference = YoloPoseReference(weights, device, base.detector.config)
    frames = ClipLoop(config.source, threaded=config.mode != "latency")
    try:
        with tempfile.TemporaryDirectory(prefix="ccm-bench-ref-") as tmp:
            records, seconds = run(reference.stream, frames, config, Path(tmp))
    finally:
        frames.close()
    return reference_report(reference, records, seconds)


def run_benchmark(
    options: PipelineSpec,
    config: BenchConfig,
    pipeline: PosePipeline | None = None,
    table: TextIO | None = None,
) -> dict[str, Any]:
    """Time the pipeline built from `options` (or the given one) on `config.source`.

    Writes `config.out/bench.json` and `config.out/bench.png`, writes the table to `table`
    (stdout by default) and returns the report (the JSON's content).
    """
    device = resolve_device(options.device)
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
        # every peer before minutes of timing, not the second one after the first was timed
        for weights in config.reference_weights:
            check_reference_weights(weights, options.detection.trust)
    config.out.mkdir(parents=True, exist_ok=True)
    if pipeline is None:  # latency mode is a live source: its defaults (int8 on a CPU)
        pipeline = build_live_pipeline(options)[0] if latency_mode else build_pipeline(options)
    base = pipeline
    people = PeopleOverride(config.fixed_people, ground_truth)
    stage_config = dataclasses.replace(
        base.config, sync_timing=latency_mode or base.config.sync_timing
    )
    bench = base.sharing_models(config=stage_config, temporal=base.temporal)
    bench.reset()
    run = _latency if latency_mode else _throughput
    graphs = compiled_graphs()  # the pose stage is built and warmed up: nothing more to compile
    reset_peak_memory(device)
    try:
        with tempfile.TemporaryDirectory(prefix="ccm-bench-") as tmp:
            runner = functools.partial(bench.stream, people=people, live=latency_mode)
            records, seconds = run(runner, frames, config, Path(tmp))
        counted = syncs_per_frame(
            device, lambda: sum(1 for _ in runner(islice(frames, SYNC_FRAMES)))
        )
    finally:
        frames.close()
    report = build_report(options, config, base, device, frames, records, seconds, people)
    report["graphs_compiled_after_warmup"] = compiled_graphs() - graphs
    report["device"]["peak_memory_mb"] = peak_memory_mb(device)
    report["host_syncs_per_frame"] = counted
    report["cpu"]["load_average_at_start"] = list(load) if load else None
    # What actually ran, where the options left it to the pipeline or to the mode.
    report["config"]["pipeline"]["detection"]["weights"] = report["pose_model"]["detector"]
    report["config"]["pipeline"]["detection"]["imgsz"] = base.detector.config.imgsz
    report["config"]["pipeline"]["pipeline"]["sync_timing"] = stage_config.sync_timing
    if config.reference:
        report["references"] = [
            compare_with_ours(report, _time_peer(weights, config, device, base, run))
            for weights in config.reference_weights
        ]
        # the first peer under the keys that held the one reference before there were several
        report["reference"] = report["references"][0]
        report["fps_ratio"] = report["reference"]["fps_ratio"]
    (config.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_stages(report, config.out / "bench.png")
    (table or sys.stdout).write(format_table(report) + "\n")
    logger.info("wrote %s and %s", config.out / "bench.json", config.out / "bench.png")
    return report
