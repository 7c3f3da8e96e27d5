"""Live sources that survive: a camera or network stream, reopened when it drops or stalls.

    with LiveSource("rtsp://cam/stream", LiveOptions(reconnect=None)) as source:
        for frame in source:            # always the newest frame; stale ones are dropped
            for gap in source.take_gaps(frame.index):
                ...                     # the source was away before this frame
            when = source.wall_time(frame)

`LiveSource` is a realtime `FrameSource` (newest frame only, drops counted in `dropped`; the
frames a network delivers in one burst count as newest together) over one connection at a
time, a `realtime.io.sources` camera or stream source. A connection that ends, fails, stalls
(no data for `timeout` seconds: PyAV's read timeout is the watchdog) or changes its frame size
is closed and reopened with backoff (0.5 s, doubling to 10 s), each attempt logged, up to
`reconnect` times in a row (None: until stopped). Frame indices run on across connections and
`pts` is seconds since the source was opened, so a gap shows as a jump in both; each gap is
also kept as a `Gap` for the frame after it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from realtime.io.frames import Frame, FrameSource, SourceInfo
from realtime.io.sources import LIVE_URL_SCHEMES, open_source

log = logging.getLogger(__name__)

STREAM_URL_SCHEMES = LIVE_URL_SCHEMES | {"http", "https"}  # http(s): MPEG-TS, MJPEG, HLS
_CAMERA_DEVICE = re.compile(r"^/dev/video\d+$")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://.+")


def is_live_spec(spec: str | Path) -> bool:
    """Whether a command-line SOURCE that is no existing path names a live source: a camera
    index ("0"), a camera device ("/dev/video0") or a stream URL of `STREAM_URL_SCHEMES`."""
    text = str(spec)
    if text.isdigit() or _CAMERA_DEVICE.match(text):
        return True
    match = _URL.match(text)
    return match is not None and match["scheme"].lower() in STREAM_URL_SCHEMES


@dataclass(frozen=True)
class LiveOptions:
    """How live sources are opened and kept alive.

    Attributes:
        timeout: seconds an open may take, and a stream may go without data before it counts
            as stalled and is reopened.
        reconnect: reopening attempts in a row after a drop; None tries until stopped, 0 never.
        camera_size: (width, height) asked of cameras, None for their default.
        camera_fps: frame rate asked of cameras, None for their default.
        backoff: seconds before the first reopening attempt, and the longest wait between two.
    """

    timeout: float = 10.0
    reconnect: int | None = None
    camera_size: tuple[int, int] | None = None
    camera_fps: float | None = None
    backoff: tuple[float, float] = (0.5, 10.0)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.reconnect is not None and self.reconnect < 0:
            raise ValueError(f"reconnect must be >= 0, got {self.reconnect}")


@dataclass(frozen=True)
class Gap:
    """A stretch without frames: the source dropped, stalled or changed size and was reopened.

    Attributes:
        before_frame: index of the first frame after the gap.
        start: wall-clock time (s since the epoch) of the capture of the last frame before.
        end: wall-clock time of the capture of the first frame after.
        reason: why the connection was given up, in words.
        attempts: opening attempts it took to get the source back.
    """

    before_frame: int
    start: float
    end: float
    reason: str
    attempts: int

    def to_dict(self) -> dict[str, object]:
        return {
            "before_frame": self.before_frame, "from": round(self.start, 3),
            "to": round(self.end, 3), "seconds": round(self.end - self.start, 3),
            "reason": self.reason, "attempts": self.attempts,
        }  # fmt: skip


class SourceLost(OSError):
    """A live source dropped and could not be reopened within `LiveOptions.reconnect` tries."""


class LiveSource(FrameSource):
    """A camera or stream in realtime mode that reopens itself (see the module docstring).

    The first connection is opened in the constructor: a source that cannot be opened within
    `options.timeout` raises ValueError naming it.
    """

    def __init__(self, spec: str, options: LiveOptions = LiveOptions()) -> None:
        super().__init__(realtime=True)
        self.spec = spec
        self.options = options
        self.reopened = 0  # connections opened after the first
        self.ended_cleanly = False  # the stream ended and was not to be reopened
        self._gaps: list[Gap] = []
        self._gaps_lock = threading.Lock()
        self._connection = self._open()
        self._start = time.monotonic()
        self._wall_offset = time.time() - self._start
        info = self._connection.info
        self.info = SourceInfo(spec, info.fps, info.width, info.height, None, None, live=True)
        # Frames decoded within half a frame interval of each other came in one burst (the
        # network held them back): all of them are processed, not only the newest.
        self._buffer.burst_s = 0.5 / info.fps

    def wall_time(self, frame: Frame) -> float:
        """When `frame` was captured, in seconds since the epoch."""
        return frame.captured + self._wall_offset

    def take_gaps(self, frame_index: int) -> list[Gap]:
        """The gaps before frame `frame_index` (and any earlier frame) not taken yet, in order."""
        with self._gaps_lock:
            taken = [g for g in self._gaps if g.before_frame <= frame_index]
            self._gaps = [g for g in self._gaps if g.before_frame > frame_index]
        return taken

    def _open(self) -> FrameSource:
        o = self.options
        started = time.monotonic()
        try:
            return open_source(
                self.spec, realtime=False, queue_size=2, timeout=o.timeout,
                camera_size=o.camera_size, camera_fps=o.camera_fps,
            )  # fmt: skip
        except (ValueError, OSError) as err:
            reason = str(err).removeprefix(f"{self.spec}: ").removeprefix("not a decodable video: ")
            took = time.monotonic() - started
            raise ValueError(f"{self.spec}: cannot open it ({reason}; after {took:.1f} s)") from err

    def _read(self) -> Iterator[Frame]:
        index = 0
        last_wall = time.time()
        connection = self._connection
        while True:
            reason = "the stream ended"
            size = (connection.info.height, connection.info.width)
            try:
                for frame in connection:
                    if frame.image.shape[:2] != size:
                        h, w = frame.image.shape[:2]
                        reason = f"the frame size changed from {size[1]}x{size[0]} to {w}x{h}"
                        break
                    yield Frame(index, frame.captured - self._start, frame.image, frame.captured)
                    last_wall = frame.captured + self._wall_offset
                    index += 1
            except RuntimeError as err:  # the connection's reader failed: dropped or stalled
                cause = err.__cause__ or err
                reason = str(cause).removeprefix(f"{self.spec}: ") or type(cause).__name__
                if "Immediate exit requested" in reason:
                    reason = f"no data for {self.options.timeout:g} s (stalled)"
            finally:
                connection.close()
            if self._stop.is_set():
                return
            log.warning("%s: %s after frame %d", self.spec, reason, index)
            connection, attempts = self._reopen(reason)
            if connection is None:
                if reason == "the stream ended":
                    self.ended_cleanly = True
                    return
                raise SourceLost(f"{self.spec}: {reason}; not reopened ({attempts} attempts)")
            self.reopened += 1
            self._connection = connection
            gap = Gap(index, last_wall, time.time(), reason, attempts)
            with self._gaps_lock:
                self._gaps.append(gap)

    def _reopen(self, reason: str) -> tuple[FrameSource | None, int]:
        """A new connection, tried with backoff; (None, attempts made) when out of tries or
        stopped."""
        delay, longest = self.options.backoff
        attempt = 0
        while self.options.reconnect is None or attempt < self.options.reconnect:
            if self._stop.wait(delay):
                return None, attempt
            attempt += 1
            try:
                connection = self._open()
            except ValueError as err:
                why = str(err).removeprefix(f"{self.spec}: ")
                log.warning("%s: reopening, attempt %d failed: %s", self.spec, attempt, why)
                delay = min(delay * 2, longest)
                continue
            log.warning("%s: reopened at attempt %d", self.spec, attempt)
            return connection, attempt
        return None, attempt

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading; the open connection is closed first, so a reader waiting on it
        returns at once."""
        self._stop.set()
        self._connection.close(timeout)
        super().close(timeout)

    def _release(self) -> None:
        self._connection.close()
