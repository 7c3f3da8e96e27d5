"""Frames and the threaded reader every source is built on.

Every source reads on a background thread into a small buffer and is consumed by iterating it:

    with open_source("clip.mp4", realtime=False) as source:   # realtime.io.sources
        for frame in source:          # Frame: index, pts (s), RGB uint8 (H, W, 3)
            ...

Two modes:

- batch (`realtime=False`): every frame arrives, in order; the reader blocks while the buffer
  is full, so a slow consumer slows the reader down and nothing is dropped.
- realtime (`realtime=True`): the buffer holds only the newest frame; a frame the consumer has
  not taken when the next one arrives is dropped and counted in `source.dropped`, so the
  latency from capture to processing stays at most one frame. A file in realtime mode is played
  at its frame rate (times `playback_rate`), as a camera would deliver it. Live network sources
  also keep the frames that arrived in one burst with the newest (`_FrameBuffer.burst_s`).

An error on the reader thread is raised in the consumer (as a RuntimeError whose cause is the
original error) once the frames read before it have been consumed; it never ends the stream
silently. A video file whose data ends before its header says (a cut download), or whose
demuxer hands over a damaged packet, raises `IncompleteVideoError` that way too.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class IncompleteVideoError(ValueError):
    """A video whose data ends before its header says, or holds a damaged packet."""


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class Frame:
    """One decoded frame.

    Attributes:
        index: position of the frame in its source, counting dropped frames.
        pts: presentation time in seconds (the container's time for files and streams,
            seconds since the first frame for cameras, index / fps for image folders).
        image: (H, W, 3) uint8 RGB, C-contiguous, in image pixels.
        captured: `time.monotonic()` when the reader produced the frame, for latency figures.
    """

    index: int
    pts: float
    image: np.ndarray
    captured: float


@dataclass(frozen=True)
class AudioTrack:
    """Where a source's audio lives, so a sink can copy its packets without re-encoding."""

    path: str
    stream_index: int
    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class SourceInfo:
    """What a source knows about itself before the first frame is consumed.

    Attributes:
        name: the path, URL or camera it reads, for messages.
        fps: average frame rate (frames per second).
        width, height: frame size in pixels (of the first image, for folders).
        frame_count: number of frames if the container says so, else None.
        audio: the audio stream to copy into an output video, or None.
        live: True for cameras and live streams (no pacing, no known end).
    """

    name: str
    fps: float
    width: int
    height: int
    frame_count: int | None
    audio: AudioTrack | None
    live: bool


class _FrameBuffer:
    """Bounded hand-over between the reader thread and the consumer.

    With `drop_oldest`, a put on a full buffer discards the oldest frame (realtime); otherwise
    it waits for room (batch). The end of the stream and a reader error are flags, not items,
    so they are never dropped and never displace a frame.

    `burst_s` (realtime): a waiting frame is kept as long as no frame captured more than
    `burst_s` seconds after it has arrived, up to `BURST_FRAMES`. A network stream that stalls
    for a moment and then delivers its frames in one clump loses none of them for no gain in
    latency, while a regular stream the consumer cannot keep up with still gives only its
    newest frame. 0 (the default) keeps only the newest.
    """

    BURST_FRAMES = 4

    def __init__(self, capacity: int, drop_oldest: bool) -> None:
        self._frames: collections.deque[Frame] = collections.deque()
        self._capacity = capacity
        self._drop_oldest = drop_oldest
        self.burst_s = 0.0
        self._cond = threading.Condition()
        self._finished = False
        self._closed = False
        self.error: BaseException | None = None
        self.dropped = 0
        self.produced = 0

    def put(self, frame: Frame) -> bool:
        """Hand a frame over; False once the consumer has closed the buffer."""
        with self._cond:
            while not self._drop_oldest and len(self._frames) >= self._capacity:
                if self._closed:
                    return False
                self._cond.wait()
            if self._closed:
                return False
            self._frames.append(frame)
            self.produced += 1
            if self._drop_oldest:
                capacity = self.BURST_FRAMES if self.burst_s > 0 else self._capacity
                while len(self._frames) > capacity or (
                    len(self._frames) > 1
                    and self._frames[0].captured < frame.captured - self.burst_s
                ):
                    self._frames.popleft()
                    self.dropped += 1
            self._cond.notify_all()
            return True

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._finished = True
            self.error = error
            self._cond.notify_all()

    def get(self) -> Frame | None:
        """The next frame; None at the end (check `error` then) or once closed."""
        with self._cond:
            while not self._frames and not self._finished and not self._closed:
                self._cond.wait()
            if self._frames:
                frame = self._frames.popleft()
                self._cond.notify_all()
                return frame
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._frames.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)


def rgb_image(image: object, what: str = "image") -> np.ndarray:
    """`image` as (H, W, 3) uint8 RGB, C-contiguous and writeable: gray and RGBA are converted,
    anything else is refused with a ValueError that names `what`."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{what}: expected a uint8 image array, got {kind}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape:
        raise ValueError(
            f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}"
        )
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = np.ascontiguousarray(image[..., :3])
    return image if image.flags.writeable else image.copy()  # torch.from_numpy wants writeable


class FrameStream(Protocol):
    """Frames in order, as the pipeline reads them; `realtime` says a live source, whose frames
    are taken one at a time, the newest first (a file's go in micro-batches)."""

    realtime: bool

    def __iter__(self) -> Iterator[Frame]: ...


class FrameSource(FrameStream):
    """Base of all sources: a reader thread feeding a `_FrameBuffer`; iterate to consume.

    Subclasses open their input in `__init__` (so a bad input fails there, on the caller's
    thread), set `self.info`, and implement `_read()` (a generator of Frames, run on the reader
    thread) and `_release()` (called once, on the reader thread when it ran).
    """

    info: SourceInfo

    def __init__(self, realtime: bool, queue_size: int = 8, playback_rate: float = 1.0) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not playback_rate > 0:
            raise ValueError(f"playback_rate must be > 0 (inf = unpaced), got {playback_rate}")
        self.realtime = realtime
        self._buffer = _FrameBuffer(1 if realtime else queue_size, drop_oldest=realtime)
        self._playback_rate = playback_rate
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._released = False
        self._lock = threading.Lock()

    # -- the reader side -------------------------------------------------------------------

    def _read(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _release_once(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            self._release()
        except Exception:  # a failed close must not hide the stream's own outcome
            log.exception("closing %s failed", self.info.name)

    def _paced(self) -> bool:
        return self.realtime and not self.info.live and self._playback_rate != float("inf")

    def _run(self) -> None:
        paced = self._paced()
        start_wall = start_pts = None
        frames = self._read()
        try:
            for frame in frames:
                if self._stop.is_set():
                    break
                if paced:
                    if start_wall is None:
                        start_wall, start_pts = time.monotonic(), frame.pts
                    due = start_wall + (frame.pts - start_pts) / self._playback_rate
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        break
                    frame = Frame(frame.index, frame.pts, frame.image, time.monotonic())
                if not self._buffer.put(frame):
                    break
            self._buffer.finish()
        except BaseException as err:  # surfaces in the consumer's next()
            self._buffer.finish(err)
        finally:
            frames.close()  # before the input it reads from is released
            self._release_once()

    # -- the consumer side -----------------------------------------------------------------

    def start(self) -> FrameSource:
        """Start the reader thread (iteration and `with` start it too; calling twice is fine)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(
                target=self._run, name=f"reader:{self.info.name}", daemon=True
            )
            self._thread.start()
        return self

    def __iter__(self) -> FrameSource:
        return self

    def __next__(self) -> Frame:
        self.start()
        frame = self._buffer.get()
        if frame is not None:
            return frame
        error = self._buffer.error
        if error is not None and not self._stop.is_set():
            reason = str(error).removeprefix(f"{self.info.name}: ") or type(error).__name__
            raise RuntimeError(
                f"{self.info.name}: reading failed after {self._buffer.produced} frames: {reason}"
            ) from error
        raise StopIteration

    @property
    def dropped(self) -> int:
        """Frames read but discarded because the consumer was busy (always 0 in batch mode)."""
        return self._buffer.dropped

    @property
    def produced(self) -> int:
        """Frames the reader has handed to the buffer so far (consumed, pending or dropped)."""
        return self._buffer.produced

    @property
    def finished(self) -> bool:
        """True once the reader thread has stopped (end of input, error or close)."""
        return self._released

    def close(self, timeout: float = 5.0) -> None:
        """Stop the reader thread and release the input. Safe to call more than once."""
        self._stop.set()
        self._buffer.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Blocked inside a network read; the thread releases the input when it returns.
                log.warning("reader of %s did not stop within %.1f s", self.info.name, timeout)
                return
        self._release_once()

    def __enter__(self) -> FrameSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
