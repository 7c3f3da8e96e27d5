"""`app.py video|images ... --ray [ADDRESS]`: the same batch as a Ray job.

    exit = run_videos_on_ray(inputs, problems, Path("out"), options, False, RayOptions(), say)

One Ray actor per GPU (or per `cpus_per_worker` cores without one) loads the models once
(`realtime.batch.ray_pool`). Videos go out whole (temporal fusion needs a video's frames in
order), the largest file first, to whichever worker is free; each worker runs the single-process
`process_video` and writes the outputs itself, with the same atomic, mirrored names, so the
folders must be at the same paths on the driver and every node. Images go out in chunks; the
workers write the rendered images, the driver writes `poses.jsonl` and the COCO files in input
order. One progress bar, one line per input, one summary and the exit code of the
single-process run (`realtime.batch.cli`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from ccm.poses import FramePoses
from realtime.batch.images import (
    ImageReport,
    ImageResultsWriter,
    finished_line,
    interrupted_line,
)
from realtime.batch.inputs import InputFile
from realtime.batch.provenance import done_before
from realtime.batch.ray_pool import Job, Lost, RayOptions, WorkerPool, connect
from realtime.batch.report import failed_summary, file_size
from realtime.batch.usage import Interrupted
from realtime.batch.videos import Renderer, VideoReport, output_paths, partial_paths
from realtime.io.atomic_files import remove_stale_parts
from realtime.render import render_frame
from realtime.stream.assemble import PipelineSpec

logger = logging.getLogger(__name__)

# Most images one worker takes at a time: few enough that a lost worker costs little, and
# that the driver can write the results in order without holding many.
MAX_CHUNK = 64


def run_videos_on_ray(
    inputs: Sequence[InputFile],
    problems: Sequence[tuple[str, str]],
    out: Path,
    options: PipelineSpec,
    skip_existing: bool,
    overwrite: bool,
    ray_options: RayOptions,
    say: Callable[[str], None],
    render: Renderer = render_frame,
) -> int:
    """Every video of `inputs` -> OUT/name.mp4 and OUT/name.jsonl on Ray; `problems` are the
    arguments that gave nothing, (spec, why). Returns 0, 1 if any input failed, or 128 +
    the signal number when stopped."""
    for spec, why in problems:
        say(f"FAILED {spec}: {why}")
    rows: list[tuple[str, str | None]] = []  # (input, error or None)
    todo: list[InputFile] = []
    for item in inputs:
        video, jsonl = output_paths(item.name, out)
        if skip_existing and done_before(item.path, video, jsonl):  # no worker needed
            rows.append((str(item.path), None))
            say(VideoReport(item.path, video, jsonl, skipped=True).line())
        else:
            todo.append(item)
    order = sorted(range(len(todo)), key=lambda i: (-file_size(todo[i].path), i))
    jobs = [Job(i, [todo[i]]) for i in order]
    bars = tqdm(total=len(inputs), initial=len(rows), desc="videos", unit="video")
    frames = tqdm(desc="frames", unit="frame", leave=False)
    finished_frames = 0

    def on_progress(running: int) -> None:
        frames.update(finished_frames + running - frames.n)

    try:
        with bars, frames, connect(ray_options) if jobs else contextlib.nullcontext():
            if jobs:  # else every output exists already: no Ray needed
                pool = WorkerPool(options, ray_options, len(jobs), out, render, on_progress)
                logger.info("%d videos on %s", len(jobs), pool.kind)
                with contextlib.closing(
                    pool.run(jobs, "video", skip_existing, overwrite)
                ) as results:
                    for job, value in results:
                        item = job.items[0]
                        report = _video_report(item, value, job.attempts, out)
                        finished_frames += report.frames
                        bars.update(1)
                        rows.append((str(item.path), report.error))
                        say(report.line())
    except KeyboardInterrupt as err:
        stop = _interrupted(err)
        # what a worker killed on the way out began after all
        remove_stale_parts(out, [p for i in inputs for p in _output_names(i.name, out)])
        finished = sum(1 for _, error in rows if error is None)
        say(
            f"interrupted by {stop.name}: {finished} of {len(inputs)} input(s) finished and "
            "kept, the unfinished ones' files removed; run again with --skip-existing to go on"
        )
        return 128 + stop.signum
    failed = [spec for spec, _ in problems] + [name for name, error in rows if error]
    total = len(problems) + len(rows)
    say(failed_summary(failed, total) if failed else f"all {total} inputs done; outputs in {out}")
    return 1 if failed else 0


def _video_report(item: InputFile, value: VideoReport | Lost, tries: int, out: Path) -> VideoReport:
    """The worker's report, with the names the user gave (it worked on absolute paths)."""
    if isinstance(value, Lost):
        return VideoReport(item.path, error=f"its Ray worker died {tries} times: {value.why}")
    value.source = item.path
    value.video = value.video and out / value.video.relative_to(out.absolute())
    value.jsonl = value.jsonl and out / value.jsonl.relative_to(out.absolute())
    if value.error:
        for absolute, given in ((item.path.absolute(), item.path), (out.absolute(), out)):
            value.error = value.error.replace(str(absolute), str(given))
    return value


def run_images_on_ray(
    files: Sequence[InputFile],
    failed: list[str],
    out: Path,
    options: PipelineSpec,
    ray_options: RayOptions,
    say: Callable[[str], None],
) -> int:
    """Every image of `files` posed on its own and drawn (`render_frame`), in chunks on Ray; the
    outputs of `realtime.batch.images.process_images`. `failed` holds the arguments that gave
    nothing (their lines are said already); `options` have temporal fusion off. Returns the
    exit code."""
    total = len(failed) + len(files)
    posed = seen = 0
    try:
        with (
            connect(ray_options),
            tqdm(total=len(files), desc="images", unit="image") as bar,
            ImageResultsWriter(out) as writer,
        ):
            pool = WorkerPool(options, ray_options, len(files), out, render_frame)
            size = max(1, min(MAX_CHUNK, math.ceil(len(files) / (4 * pool.size))))
            jobs = [
                Job(k, list(files[i : i + size])) for k, i in enumerate(range(0, len(files), size))
            ]
            logger.info("%d images in %d chunks on %s", len(files), len(jobs), pool.kind)
            done: dict[int, list[tuple[ImageReport, FramePoses | None]]] = {}
            next_chunk = 0
            with contextlib.closing(pool.run(jobs, "images")) as results:
                for job, value in results:
                    if isinstance(value, Lost):
                        why = f"its Ray worker died {job.attempts} times: {value.why}"
                        value = [(ImageReport(i.path, i.name, error=why), None) for i in job.items]
                    for item, (report, _poses) in zip(job.items, value, strict=True):
                        report.source = item.path
                        if report.error:
                            failed.append(str(item.path))
                            say(f"FAILED {item.path}: {report.error}")
                    bar.update(len(job.items))
                    seen += len(job.items)
                    done[job.index] = value
                    while next_chunk in done:  # the lines go in input order
                        for report, poses in done.pop(next_chunk):
                            if poses is not None:
                                writer.add(report, poses)
                                posed += 1
                        next_chunk += 1
    except KeyboardInterrupt as err:
        stop = _interrupted(err)
        remove_stale_parts(out)
        say(interrupted_line(stop.name, seen, len(files)))
        return 128 + stop.signum
    if failed:
        say(failed_summary(failed, total))
    say(finished_line(posed, out))
    return 1 if failed else 0


def _interrupted(err: KeyboardInterrupt) -> Interrupted:
    """The signal that stopped the command; a bare KeyboardInterrupt (Ray raises one for a
    signal that arrives while it waits) is Ctrl-C."""
    return err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)


def _output_names(name: str, out: Path) -> tuple[Path, ...]:
    return (*output_paths(name, out), *partial_paths(name, out))
