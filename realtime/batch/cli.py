"""The `video` and `images` commands: inputs expanded, shared out across torchrun ranks, run
with progress bars, one line per input and one summary line; the exit code says if any failed.

    exit = run_videos(["clips/"], Path("out"), options)      # 0 all done, 1 some input failed,
    exit = run_images(["photos/"], Path("out"), options)     # 128 + signal number if stopped

These are the command-line layer (tqdm, lines on stdout); the work itself is
`realtime.batch.videos.process_video` and `realtime.batch.images.process_images`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from realtime.batch import distributed
from realtime.batch.images import (
    COCO_IMAGES_FILE,
    COCO_RESULTS_FILE,
    POSES_FILE,
    ImageReport,
    finished_line,
    interrupted_line,
    process_images,
)
from realtime.batch.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, ExpandedInputs, expand_inputs
from realtime.batch.output_guard import refuse_outputs_on_inputs
from realtime.batch.report import describe, failed_summary, file_size, say
from realtime.batch.usage import Interrupted, UsageError, check_out_dir, load_pipeline
from realtime.batch.videos import (
    output_paths,
    partial_paths,
    process_video,
)
from realtime.io.atomic_files import remove_stale_parts
from realtime.render import render_frame
from realtime.stream.assemble import PipelineSpec
from realtime.temporal.fusion import TemporalConfig

if TYPE_CHECKING:
    from realtime.batch.ray_pool import RayOptions

logger = logging.getLogger(__name__)


def _video_input_problems(found: ExpandedInputs) -> list[tuple[str, str]]:
    """Arguments that gave nothing, with a hint where one helps."""
    problems = []
    for spec, why in found.unmatched:
        if Path(spec).is_dir() and expand_inputs([spec], IMAGE_SUFFIXES).files:
            why += "; it holds images: use `app.py images`"
        problems.append((spec, why))
    return problems


def run_videos(
    specs: Sequence[str | Path],
    out: Path,
    options: PipelineSpec,
    skip_existing: bool = False,
    overwrite: bool = False,
    ray: RayOptions | None = None,
) -> int:
    """`app.py video`: every video of `specs` -> OUT/name.mp4 and OUT/name.jsonl. Under
    torchrun each rank runs its share on its own device and rank 0 prints the summary; with
    `ray`, the videos go to a Ray job (`realtime.batch.ray_jobs`)."""
    ranks = distributed.ranks_from_env()
    check_out_dir(out)
    found = expand_inputs(specs, VIDEO_SUFFIXES, exclude=out)
    problems = _video_input_problems(found)
    inputs = []
    for item in found.files:
        if item.path.suffix.lower() in IMAGE_SUFFIXES:
            problems.append((str(item.path), "an image, not a video: use `app.py images`"))
        else:
            inputs.append(item)
    written = [p for i in inputs for p in (*output_paths(i.name, out), *partial_paths(i.name, out))]
    refuse_outputs_on_inputs([i.path for i in inputs], written, f"--out {out}")
    remove_stale_parts(out, written)
    if ray is not None:
        from realtime.batch.ray_jobs import run_videos_on_ray

        return run_videos_on_ray(
            inputs, problems, out, options, skip_existing, overwrite, ray, say=say
        )
    if ranks.distributed and ranks.rank == 0:
        logger.warning("splitting a batch under torchrun is deprecated: use --ray (README)")
    distributed.start(ranks)
    tag = f"[{ranks.label}] " if ranks.distributed else ""
    mine = distributed.shard(inputs, [file_size(i.path) for i in inputs], ranks)
    if ranks.rank == 0:
        for spec, why in problems:
            say(f"FAILED {spec}: {why}")
    rows: list[tuple[str, str | None]] = []  # (input, error or None) for the summary
    state = {"current": None, "frame": 0}
    try:
        if mine:
            try:
                device = distributed.rank_device(options.device, ranks)
            except ValueError as err:
                raise UsageError(str(err)) from None
            pipeline = load_pipeline(dataclasses.replace(options, device=device))
        show = not ranks.distributed or ranks.rank == 0
        with tqdm(total=len(mine), desc=f"{tag}videos", unit="video", disable=not show) as bar:
            for item in mine:
                state["current"], state["frame"] = item.path, 0
                with tqdm(desc=item.path.name, unit="frame", leave=False, disable=not show) as fb:

                    def progress(done: int, total: int | None, fb=fb) -> None:
                        state["frame"] = done
                        fb.total = total
                        fb.update(done - fb.n)

                    report = process_video(
                        item.path, out, pipeline, render_frame, progress, skip_existing,
                        name=item.name, overwrite=overwrite,
                    )  # fmt: skip
                bar.update(1)
                rows.append((str(item.path), report.error))
                say(tag + report.line())
            state["current"] = None
    except Interrupted as stop:
        where = f" during {state['current']} (frame {state['frame']})" if state["current"] else ""
        finished = sum(1 for _, error in rows if error is None)
        say(
            f"{tag}interrupted by {stop.name}{where}: {finished} of {len(mine)} input(s) "
            "finished and kept, the unfinished one's files removed; run again with "
            "--skip-existing to go on"
        )
        return 128 + stop.signum
    except UsageError as err:
        if not ranks.distributed:
            raise
        rows = [(str(i.path), describe(err, "")) for i in mine]  # tell the others
        say(f"{tag}error: {err}")
    merged = [row for part in distributed.gather(rows, ranks) for row in part]
    failed = [spec for spec, _ in problems] + [name for name, error in merged if error]
    total = len(problems) + len(merged)
    if ranks.rank == 0:
        if failed:
            say(failed_summary(failed, total))
        else:
            spread = f" on {ranks.world_size} processes" if ranks.distributed else ""
            say(f"all {total} inputs done{spread}; outputs in {out}")
    distributed.stop(ranks)
    return 1 if failed else 0


def run_images(
    specs: Sequence[str | Path],
    out: Path,
    options: PipelineSpec,
    overwrite: bool = False,
    ray: RayOptions | None = None,
) -> int:
    """`app.py images`: every image of `specs` posed on its own (temporal fusion off) ->
    OUT/poses.jsonl, OUT/coco_results.json, OUT/coco_images.json and rendered images; with
    `ray`, in chunks on a Ray job (`realtime.batch.ray_jobs`)."""
    check_out_dir(out)
    found = expand_inputs(specs, IMAGE_SUFFIXES, keep_suffix=True, exclude=out, kind="image")
    for spec, why in found.unmatched:
        say(f"FAILED {spec}: {why}")
    shared = [out / POSES_FILE, out / COCO_RESULTS_FILE, out / COCO_IMAGES_FILE]
    written = shared + [out / item.name for item in found.files]
    refuse_outputs_on_inputs([item.path for item in found.files], written, f"--out {out}")
    earlier = [path for path in shared if path.exists()]
    if earlier and found.files and not overwrite:
        raise UsageError(
            f"--out {out}: {earlier[0]} exists (an earlier run); pass --overwrite to replace "
            "it, or choose another --out"
        )
    remove_stale_parts(out, written)
    failed = [spec for spec, _ in found.unmatched]
    total = len(found.unmatched) + len(found.files)
    state = {"done": 0}
    if ray is not None and found.files:
        from realtime.batch.ray_jobs import run_images_on_ray

        options = dataclasses.replace(options, temporal=TemporalConfig(method="none"))
        return run_images_on_ray(found.files, failed, out, options, ray, say=say)
    try:
        if found.files:
            options = dataclasses.replace(options, temporal=TemporalConfig(method="none"))
            pipeline = load_pipeline(options)
            with tqdm(total=len(found.files), desc="images", unit="image") as bar:

                def progress(report: ImageReport) -> None:
                    state["done"] += 1
                    bar.update(1)
                    if report.error:
                        failed.append(str(report.source))
                        say(f"FAILED {report.source}: {report.error}")
                    else:
                        state["posed"] = state.get("posed", 0) + 1
                        logger.debug("%s -> %s (%d people)", *(report.source, report.rendered,
                                     report.people))  # fmt: skip

                process_images(found.files, out, pipeline, render_frame, progress)
    except Interrupted as stop:
        say(interrupted_line(stop.name, state["done"], len(found.files)))
        return 128 + stop.signum
    if failed:
        say(failed_summary(failed, total))
    if found.files:
        say(finished_line(state.get("posed", 0), out))
    return 1 if failed else 0
