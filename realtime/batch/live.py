"""`app.py video` on live sources: cameras and network streams, shown, saved and survived.

    code = run_live(["rtsp://cam/stream", "0"], Path("out"), PipelineSpec(), LiveRun())

Every source is a `realtime.io.live.LiveSource` (newest frame only, stale frames dropped and
counted, reopened when it drops or stalls) read by a thread of its own, which hands each frame
to one `ServingWorker`: the worker puts the newest frames of all sources through the detector
and the pose network together, and never waits long for a source that sends nothing, so a slow
or dead source does not hold back the others. Each source has its own tracks (`StreamState`)
and its own outputs (`realtime.batch.segments.LiveSegment`): `OUT/<source>-<UTC start>.jsonl`,
flushed per frame, and `.mp4`, finished when the run stops (end of stream, Ctrl-C, SIGTERM, q
or Esc in a `--show` window), every `segment_s` seconds, and when the frame size changes.

At the end, and every minute with -v, the log gives per source the frames received, processed
and dropped, and the latency from capture to the frame's JSON line (p50 / p95).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from realtime.batch.segments import LiveSegment
from realtime.batch.usage import Interrupted, UsageError, check_out_dir, load_pipeline
from realtime.io.atomic_files import remove_stale_parts
from realtime.io.live import LiveOptions, LiveSource, is_live_spec
from realtime.render import render_frame
from realtime.stream.assemble import PipelineSpec
from realtime.stream.serving import EngineKey, PipelineCache, ServingWorker
from realtime.stream.state import StreamState
from realtime.temporal.fusion import TemporalFusion

logger = logging.getLogger(__name__)

STATS_EVERY_S = 60.0


@dataclass(frozen=True)
class LiveRun:
    """`source`: how sources are opened and kept alive; `segment_s`: seconds per pair of output
    files (None: one pair per run, and per frame size); `show`: a window per source."""

    source: LiveOptions = field(default_factory=LiveOptions)
    segment_s: float | None = None
    show: bool = False

    def __post_init__(self) -> None:
        if self.segment_s is not None and not self.segment_s > 0:
            raise ValueError(f"segment length must be > 0, got {self.segment_s} s")


def live_specs(specs: Sequence[str | Path]) -> list[str]:
    """The arguments that name live sources: no existing path, and `is_live_spec`."""
    return [str(s) for s in specs if not Path(s).exists() and is_live_spec(s)]


def source_slug(spec: str) -> str:
    """A file-name part for a source, without credentials: "0" -> "camera0",
    "/dev/video0" -> "dev-video0", "rtsp://user:pw@cam:554/live" -> "rtsp-cam-554-live"."""
    if spec.isdigit():
        return f"camera{spec}"
    if "://" in spec:
        url = urlsplit(spec)
        port = f"-{url.port}" if url.port else ""
        spec = f"{url.scheme}-{url.hostname or ''}{port}-{url.path}"
    return re.sub(r"[^A-Za-z0-9_.]+", "-", spec).strip("-.")[:80] or "source"


def check_display() -> None:
    """A UsageError unless windows can be shown (`--show`)."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise UsageError(
            "--show: no display to open windows on (DISPLAY is not set); run without --show, "
            "or in a desktop session (or under xvfb-run)"
        )


@dataclass
class LiveStats:
    """What one source has done. Latencies: ms from capture to the frame's JSON line."""

    processed: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))

    def line(self, source: LiveSource) -> str:
        latency = "no frame yet"
        if self.latencies_ms:
            p50, p95 = np.percentile(np.asarray(self.latencies_ms), [50, 95])
            latency = f"p50 {p50:.0f} ms, p95 {p95:.0f} ms"
        return (
            f"{source.spec}: {source.produced} frames received, {self.processed} processed, "
            f"{source.dropped} dropped; latency capture to JSON line {latency}; "
            f"{source.reopened} reconnects"
        )


class LiveStream:
    """One source's thread: frames to the worker, results to its outputs."""

    def __init__(
        self, number: int, source: LiveSource, state: StreamState, out: Path, run: LiveRun
    ) -> None:
        self.number, self.source, self.state, self.out, self.run = number, source, state, out, run
        self.slug = source_slug(source.spec)
        self.stats = LiveStats()
        self.segment: LiveSegment | None = None
        self.written: list[tuple[Path, Path]] = []
        self.error: str | None = None
        self.shown: np.ndarray | None = None  # the newest rendered frame, for --show
        self.in_window = False
        self._size: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._loop, name=f"live:{self.slug}", daemon=True)

    def start(self, worker: ServingWorker, key: EngineKey) -> None:
        self.worker, self.key = worker, key
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()

    def _loop(self) -> None:
        try:
            for frame in self.source:
                size = frame.image.shape[:2]
                if self._size is not None and size != self._size:
                    self.state.reset()  # tracks of another frame size mean nothing here
                self._size = size
                result = self.worker.frame(self.number, self.key, self.state, frame)
                if result is None:
                    continue
                segment = self._segment_for(size)
                for gap in self.source.take_gaps(frame.index):
                    segment.write_gap(gap)
                segment.write(result, self.source.wall_time(frame))
                self.stats.latencies_ms.append((time.monotonic() - frame.captured) * 1000)
                self.stats.processed += 1
        except Exception as err:  # reported by name; the other sources go on
            logger.debug("%s failed", self.source.spec, exc_info=True)
            self.error = str(err).removeprefix(f"{self.source.spec}: ") or type(err).__name__
        finally:
            self._close_segment()

    def _segment_for(self, size: tuple[int, int]) -> LiveSegment:
        segment = self.segment
        if segment is not None:
            resized = segment.size is not None and segment.size != size
            old = self.run.segment_s is not None and (
                time.monotonic() - segment.started >= self.run.segment_s
            )
            if not (resized or old):
                return segment
            if resized:
                h, w = size
                logger.info("%s: frame size now %dx%d; new output files", self.source.spec, w, h)
            self._close_segment()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        on_rendered = self._keep_shown if self.run.show else None
        self.segment = LiveSegment(
            self.out, f"{self.slug}-{stamp}", self.source.info.fps, render_frame, on_rendered
        )
        logger.info("%s -> %s, %s", self.source.spec, self.segment.video_path,
                    self.segment.jsonl_path)  # fmt: skip
        return self.segment

    def _keep_shown(self, image: np.ndarray) -> None:
        self.shown = image

    def _close_segment(self) -> None:
        segment, self.segment = self.segment, None
        if segment is None:
            return
        try:
            segment.close()
        except Exception as err:
            self.error = self.error or str(err)
        finally:
            self.written.append((segment.video_path, segment.jsonl_path))


def _open_all(specs: list[str], options: LiveOptions) -> list[LiveSource | str]:
    """Every source opened at once (a dead one costs its timeout, not the others' time):
    a LiveSource, or the one-line reason it could not be opened."""

    def attempt(spec: str) -> LiveSource | str:
        try:
            return LiveSource(spec, options)
        except (ValueError, OSError) as err:
            return str(err).removeprefix(f"{spec}: ")

    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        return list(pool.map(attempt, specs))


def run_live(specs: Sequence[str], out: Path, options: PipelineSpec, run: LiveRun) -> int:
    """Run the pipeline on live sources until they end or the user stops it (see the module
    docstring). Returns 0 when every source ran until then, 1 when any could not be opened or
    was lost."""
    check_out_dir(out)
    if run.show:
        check_display()
    remove_stale_parts(out)  # temporary files of runs that were killed
    pipeline = load_pipeline(options, live=True)
    opened = _open_all(list(specs), run.source)
    failed = [(spec, why) for spec, why in zip(specs, opened, strict=True) if isinstance(why, str)]
    for spec, why in failed:
        logger.error("FAILED %s: %s", spec, why)
    sources = [s for s in opened if isinstance(s, LiveSource)]
    if not sources:
        return 1
    for source in sources:
        i = source.info
        logger.info("%s: %dx%d at %.4g fps", source.spec, i.width, i.height, i.fps)
    # The path only names the loaded engine (the cache's base, the one every source uses).
    cache = PipelineCache(pipeline, options.pose or Path("default-pose-checkpoint"))
    worker = ServingWorker(cache, max_streams=len(sources))
    streams = []
    for number, source in enumerate(sources):
        temporal = TemporalFusion(options.temporal) if options.temporal.method != "none" else None
        state = pipeline.new_stream(temporal)
        streams.append(LiveStream(number, source, state, out, run))
    stopped_by = None
    try:
        for stream in streams:
            stream.start(worker, cache.base)
        stopped_by = _watch(streams, run.show)
    except Interrupted as stop:
        stopped_by = stop.name
    finally:
        for stream in streams:
            stream.source.close()
        for stream in streams:
            stream.join()
        worker.close()
        if run.show:
            _close_windows()
    if stopped_by:
        logger.info("stopped by %s; the outputs are finished", stopped_by)
    stats = worker.stats
    logger.info("the models ran %d rounds for %d frames, up to %d frames (sources) a round",
                stats.rounds, stats.frames, stats.largest_batch)  # fmt: skip
    for stream in streams:
        logger.info("%s", stream.stats.line(stream.source))
        for video, lines in stream.written:
            kept = [str(p) for p in (video, lines) if p.exists()]
            logger.info("%s: wrote %s", stream.source.spec, ", ".join(kept))
        if stream.error:
            logger.error("FAILED %s: %s", stream.source.spec, stream.error)
            failed.append((stream.source.spec, stream.error))
    return 1 if failed else 0


def _watch(streams: list[LiveStream], show: bool) -> str | None:
    """Wait on the main thread (where signals arrive) until every stream ends or the user
    closes a window; show the windows and log the stats every minute with -v. Returns what
    stopped the run early ("q" in a window), else None."""
    verbose = logger.isEnabledFor(logging.DEBUG)
    next_stats = time.monotonic() + STATS_EVERY_S
    while any(s.alive() for s in streams):
        if show:
            if _show_windows(streams):
                return "the q / Esc key"
        else:
            time.sleep(0.1)
        if verbose and time.monotonic() >= next_stats:
            next_stats += STATS_EVERY_S
            for stream in streams:
                logger.info("%s", stream.stats.line(stream.source))
    return None


def _show_windows(streams: list[LiveStream]) -> bool:
    """Show each stream's newest rendered frame; True once q or Esc is pressed."""
    import cv2

    for stream in streams:
        image, stream.shown = stream.shown, None
        if image is not None:
            cv2.imshow(stream.source.spec, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if not stream.in_window:
                stream.in_window = True
                logger.info("%s: shown in a window (q or Esc stops)", stream.source.spec)
    return cv2.waitKey(30) & 0xFF in (ord("q"), 27)


def _close_windows() -> None:
    import cv2

    try:
        cv2.destroyAllWindows()
    except cv2.error:
        logger.debug("closing the windows failed", exc_info=True)
