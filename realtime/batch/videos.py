"""Batch processing of video files: each input -> a rendered H.264 mp4 and a JSON Lines file.

For an input named `sub/clip` (see `realtime.batch.inputs`) the outputs are `OUT/sub/clip.mp4` and
`OUT/sub/clip.jsonl`, both written to a temp file and renamed only when the whole video
succeeded: a video that fails part-way (a cut-off file, a decoder error, a full disk, Ctrl-C)
leaves nothing under its final names. When the input itself breaks off, the frames before the
break are kept as `OUT/sub/clip.partial.mp4` and `.partial.jsonl`. Rendering and encoding run
on a worker thread, so the device works on frame t+1 while frame t is drawn and encoded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ccm.poses import FramePoses
from realtime.batch.provenance import earlier_outputs, fingerprint_tag, source_fingerprint
from realtime.batch.report import describe
from realtime.io.atomic_files import close_together, full_disk_message
from realtime.io.frames import Frame
from realtime.io.sinks import JsonlWriter, Mp4Writer
from realtime.io.sources import open_source
from realtime.stream.pipeline import PosePipeline
from realtime.stream.results import FrameResult

logger = logging.getLogger(__name__)

Renderer = Callable[[np.ndarray, FramePoses, float | None, float | None], np.ndarray]

# Errors whose message says it all; any other kind is named in the report.


@dataclass
class VideoReport:
    """What happened to one input. `error` is None on success; `frames` counts the frames
    processed (on failure: how far it got). `video` and `jsonl` are the files written: the
    final ones on success, the `.partial` ones when reading failed part-way, else None."""

    source: Path
    video: Path | None = None
    jsonl: Path | None = None
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The line that says what became of the input."""
        if self.error:
            return f"FAILED {self.source}: {self.error}"
        if self.skipped:
            return f"skipped {self.source}: {self.video} and {self.jsonl} exist"
        done = f"{self.frames} frames, {self.fps:.1f} fps"
        return f"{self.source} -> {self.video}, {self.jsonl} ({done})"


def output_paths(name: str, out_dir: Path) -> tuple[Path, Path]:
    """The rendered video and the JSONL of the input with output name `name` ("sub/clip")."""
    return out_dir / f"{name}.mp4", out_dir / f"{name}.jsonl"


def partial_paths(name: str, out_dir: Path) -> tuple[Path, Path]:
    """Where the frames before a reading error go: `OUT/sub/clip.partial.mp4` and `.jsonl`."""
    return out_dir / f"{name}.partial.mp4", out_dir / f"{name}.partial.jsonl"


class _ReadError(Exception):
    """The source failed part-way (its error is the cause); what came before it is sound."""


def _read(frames: Iterable[Frame]) -> Iterator[Frame]:
    try:
        yield from frames
    except Exception as err:
        raise _ReadError() from err


def process_video(
    source: Path,
    out_dir: Path,
    pipeline: PosePipeline,
    render: Renderer,
    progress: Callable[[int, int | None], None] | None = None,
    skip_existing: bool = False,
    name: str | None = None,
    overwrite: bool = False,
) -> VideoReport:
    """Run the pipeline over every frame of `source` (no frame dropped) and write both outputs.

    Never raises for a bad input: the reason is in the report. `progress(done, total)` is called
    after each frame (total None when the container does not say). `name` is the output name
    (default: the file's stem). A source that fails part-way (a cut-off file, a decoder error)
    is a failed input: nothing goes under the final names, and the frames before the error go
    to `partial_paths` (`report.video` / `report.jsonl` name them). KeyboardInterrupt and the
    like pass through, after the unfinished outputs are removed.

    Outputs already under the names are skipped (`skip_existing`) only when the video records
    this very input (`realtime.batch.provenance`); outputs of any other file are replaced only
    with `overwrite`, else the input fails saying so.
    """
    name = name or source.stem
    video_path, jsonl_path = output_paths(name, out_dir)
    report = VideoReport(source)
    try:
        mine = source_fingerprint(source)
    except OSError:
        mine = None  # opening it below says what is wrong
    earlier, origin = earlier_outputs(mine, video_path, jsonl_path)
    if skip_existing and earlier == "same" and jsonl_path.is_file():
        report.video, report.jsonl, report.skipped = video_path, jsonl_path, True
        return report
    if earlier == "other" and not overwrite:
        report.error = (
            f"{video_path} or {jsonl_path} holds the results of {origin}, not of this input; "
            "pass --overwrite to replace them, or choose another --out"
        )
        return report
    if earlier == "other":
        logger.warning("replacing %s and %s (results of %s)", video_path, jsonl_path, origin)
    start = time.perf_counter()
    read_error: _ReadError | None = None
    try:
        video_path.parent.mkdir(parents=True, exist_ok=True)
        with open_source(source, realtime=False) as frames:
            info = frames.info
            tag = fingerprint_tag(mine) if mine is not None else None
            pipeline.reset()
            with (
                Mp4Writer(video_path, info.fps, audio=info.audio, comment=tag) as video,
                JsonlWriter(jsonl_path) as jsonl,
            ):
                writer = OutputWorker(video, jsonl, render)
                try:
                    for result in pipeline.stream(_read(frames)):
                        writer.put(result)
                        report.frames += 1
                        if progress is not None:
                            progress(report.frames, info.frame_count)
                except _ReadError as err:
                    read_error = err
                    if report.frames == 0:
                        writer.close(cancel=True)
                        raise
                    video.keep_as(partial_paths(name, out_dir)[0])
                    jsonl.keep_as(partial_paths(name, out_dir)[1])
                except BaseException:
                    writer.close(cancel=True)  # these outputs are discarded: stop drawing
                    raise
                writer.close()
                report.stage_ms = writer.mean_stage_ms()
                close_together(video, jsonl)  # both outputs, or neither
        report.video, report.jsonl = video.path, jsonl.path
        if read_error is not None:
            raise read_error
        for stale in partial_paths(name, out_dir):  # of an earlier run, now complete
            stale.unlink(missing_ok=True)
    except Exception as err:  # a bad input is reported, never aborts the batch
        logger.debug("failed on %s", source, exc_info=True)
        cause = err.__cause__ if isinstance(err, _ReadError) else err
        report.error = full_disk_message(cause, out_dir) or describe(cause, source)
        if report.frames and read_error is None:
            report.error += f" (stopped after {report.frames} frames; nothing written)"
        if read_error is not None and report.video is not None:
            report.error += f"; the {report.frames} frames before are in {report.video}"
            report.error += f" and {report.jsonl}"
    report.seconds = time.perf_counter() - start
    return report


class OutputWorker:
    """Renders and encodes results on its own thread; re-raises its error in the caller."""

    def __init__(
        self, video: Mp4Writer, jsonl: JsonlWriter, render: Renderer, depth: int = 4
    ) -> None:
        self.video, self.jsonl, self.render = video, jsonl, render
        self._queue: queue.Queue[FrameResult | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._totals: dict[str, float] = {}
        self._count = 0
        self._last_done: float | None = None
        self._thread = threading.Thread(target=self._run, name="ccm-output", daemon=True)
        self._thread.start()

    def put(self, result: FrameResult) -> None:
        self._raise_error()
        self._queue.put(result)

    def close(self, cancel: bool = False) -> None:
        """Wait until every result put is written (with `cancel`: dropped instead). Returns
        only once the thread has ended, even if interrupted (e.g. by Ctrl-C) while waiting,
        so the writers are never closed under it."""
        if cancel:
            self._cancel.set()
        try:
            self._queue.put(None)
            self._thread.join()
        except BaseException:
            self._cancel.set()
            self._queue.put(None)  # the first one may not have gone in
            self._thread.join()
            raise
        if not cancel:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            err = self._error
            raise RuntimeError(f"writing the outputs failed: {describe(err, '')}") from err

    def mean_stage_ms(self) -> dict[str, float]:
        return {k: v / max(self._count, 1) for k, v in self._totals.items()}

    def _run(self) -> None:
        while (result := self._queue.get()) is not None:
            if self._error is not None or self._cancel.is_set():
                continue  # drain, so the producer never blocks on a dead worker
            try:
                self._write(result)
            except BaseException as err:
                self._error = err

    def _write(self, result: FrameResult) -> None:
        now = time.perf_counter()
        fps = None if self._last_done is None else 1.0 / max(now - self._last_done, 1e-6)
        self._last_done = now
        t0 = time.perf_counter()
        image = self.render(result.frame.image, result.poses, fps, result.latency_ms)
        t1 = time.perf_counter()
        self.video.write(image, result.frame.pts)
        self.jsonl.write(result.poses)
        t2 = time.perf_counter()
        result.timings.update(render=(t1 - t0) * 1000, encode=(t2 - t1) * 1000)
        for stage in result.timings:
            self._totals[stage] = self._totals.get(stage, 0.0) + result.frame_ms(stage)
        self._count += 1
