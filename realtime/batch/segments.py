"""Outputs of a live source: pairs of files, readable while they grow and never overwritten.

    segment = LiveSegment(Path("out"), "rtsp-cam-554-stream-20261203T081500Z", fps=15.0,
                          render=render_frame)
    segment.write(result, captured=time.time())     # one JSON line, flushed; frame queued
    segment.write_gap(gap)                          # {"gap": {...}}
    segment.close()                                 # the mp4 finished and moved into place

The JSON Lines file is written under its final name and flushed after every line, so
`tail -f` follows it and nothing written is lost when the run ends in any way. Its lines are
the video schema with `captured` (wall-clock seconds since the epoch) added, and one
`{"gap": Gap.to_dict()}` line where the source was away. The rendered mp4 is drawn and encoded
on a worker thread into a hidden temporary file (`Mp4Writer`) and renamed into place when the
segment closes (the end of the stream, Ctrl-C, SIGTERM, the next segment).

Names: `OUT/<base>.jsonl` and `OUT/<base>.mp4`, or `<base>-2`, `-3`, ... when either exists
already, claimed by creating the JSON Lines file exclusively, so two writers never share one.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ccm.poses import FramePoses
from realtime.io.live import Gap
from realtime.io.sinks import Mp4Writer
from realtime.stream.results import FrameResult

log = logging.getLogger(__name__)

Renderer = Callable[[np.ndarray, FramePoses, float | None, float | None], np.ndarray]


def claim_names(out_dir: Path, base: str) -> tuple[Path, Path]:
    """Free `(mp4, jsonl)` paths for `base` in `out_dir`; the JSON Lines file is created (empty)
    to hold the name."""
    for n in range(1, 10_000):
        stem = base if n == 1 else f"{base}-{n}"
        video, lines = out_dir / f"{stem}.mp4", out_dir / f"{stem}.jsonl"
        if video.exists():
            continue
        try:
            lines.touch(exist_ok=False)
        except FileExistsError:
            continue
        return video, lines
    raise FileExistsError(f"{out_dir}: no free name for {base}")


class LiveSegment:
    """One pair of outputs of a live source (see the module docstring).

    Args:
        out_dir: an existing folder.
        base: the file name without suffix.
        fps: the source's frame rate, the mp4's time grid.
        render: draws poses onto a frame (`realtime.render.render_frame`).
        on_rendered: called on the worker thread with each rendered (H, W, 3) RGB frame.
    """

    def __init__(
        self,
        out_dir: Path,
        base: str,
        fps: float,
        render: Renderer,
        on_rendered: Callable[[np.ndarray], None] | None = None,
        depth: int = 4,
    ) -> None:
        self.video_path, self.jsonl_path = claim_names(out_dir, base)
        self._lines = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
        try:
            self._video = Mp4Writer(self.video_path, fps)
        except BaseException:
            self._lines.close()
            raise
        self.render, self.on_rendered = render, on_rendered
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (height, width) of its frames
        self.started = time.monotonic()
        self._start_pts: float | None = None
        self._last_done: float | None = None
        self._error: BaseException | None = None
        self._queue: queue.Queue[FrameResult | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name=f"render:{base}", daemon=True)
        self._thread.start()

    def write(self, result: FrameResult, captured: float) -> None:
        """The frame's JSON line (flushed), then the frame to the renderer. Blocks while the
        renderer is `depth` frames behind."""
        if self._error is not None:
            raise RuntimeError(f"{self.video_path}: writing failed: {self._error}") from self._error
        record = result.poses.to_dict()
        record = {"frame": record["frame"], "pts": record["pts"],
                  "captured": round(captured, 3), "poses": record["poses"]}  # fmt: skip
        self._line(record)
        if self._start_pts is None:
            self._start_pts = result.frame.pts
            self.size = result.frame.image.shape[:2]
        self.frames += 1
        self._queue.put(result)

    def write_gap(self, gap: Gap) -> None:
        self._line({"gap": gap.to_dict()})

    def _line(self, record: dict) -> None:
        self._lines.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        self._lines.flush()

    def close(self) -> None:
        """Write what is queued, finish the mp4 and move it into place (none if no frame was
        written), close the JSON Lines file. Waits for the worker even if interrupted."""
        try:
            self._queue.put(None)
            self._thread.join()
        finally:
            self._lines.close()
            if self._video.frames_written:
                self._video.close()
            else:
                self._video.abort()
                log.info("%s: no frame rendered; no video written", self.video_path)
        if self._error is not None:
            raise RuntimeError(f"{self.video_path}: writing failed: {self._error}") from self._error

    def _run(self) -> None:
        while (result := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so the producer never blocks on a dead worker
            try:
                now = time.perf_counter()
                fps = None if self._last_done is None else 1 / max(now - self._last_done, 1e-6)
                self._last_done = now
                latency = (time.monotonic() - result.frame.captured) * 1000
                image = self.render(result.frame.image, result.poses, fps, latency)
                self._video.write(image, result.frame.pts - self._start_pts)
                if self.on_rendered is not None:
                    self.on_rendered(image)
            except BaseException as err:  # raised in the producer's next write or close
                self._error = err
