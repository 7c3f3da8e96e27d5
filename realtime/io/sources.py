"""Frame sources: video files and streams (PyAV), image folders, webcams (OpenCV).

    with open_source("clip.mp4", realtime=False) as source:
        for frame in source:          # Frame: index, pts (s), RGB uint8 (H, W, 3)
            ...

Each is a `realtime.io.frames.FrameSource`: a reader thread and a small buffer, in batch or realtime
mode (see there), errors raised in the consumer.

Frames come in the displayed orientation: a video's rotation tag (display matrix) and an
image's EXIF orientation are applied before the frame is handed on, so a portrait phone clip
gives portrait frames and keypoints in the orientation a player shows.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2

from realtime.io.frames import AudioTrack, Frame, FrameSource, IncompleteVideoError, SourceInfo
from realtime.io.images import (
    DEFAULT_FPS,
    ImageFolderSource,
    quarter_turns,
    turn,
)

log = logging.getLogger(__name__)

LIVE_URL_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "rtp"})
_CAMERA_DEVICE = re.compile(r"^/dev/video\d+$")
_HELD_DAMAGED = 16  # damaged frames held back to see whether the data goes on after them


class VideoSource(FrameSource):
    """A video file or a network stream (RTSP, RTMP, HTTP, ...) decoded with PyAV.

    The container is opened and its first frame decoded in the constructor, so a missing,
    corrupt or unreachable input raises here: ValueError naming the input and PyAV's reason.
    """

    def __init__(
        self,
        path_or_url: str | Path,
        realtime: bool,
        queue_size: int = 8,
        playback_rate: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(realtime, queue_size, playback_rate)
        name = str(path_or_url)
        is_url = "://" in name
        options = {"rtsp_transport": "tcp"} if name.startswith("rtsp") else {}
        try:
            self._container = av.open(name, options=options, timeout=(timeout, timeout))
        except av.error.FileNotFoundError as err:
            raise FileNotFoundError(f"video not found: {name}") from err
        except (av.error.FFmpegError, OSError) as err:
            raise ValueError(f"{name}: not a decodable video: {err}") from err
        try:
            if not self._container.streams.video:
                raise ValueError(
                    f"{name}: not a decodable video: no video stream "
                    f"(read as {self._container.format.name})"
                )
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            self._name = name
            self._expected = stream.frames or None
            self._discarded = 0
            self._data_end: float | None = None  # seconds: how far any stream's packets reach
            self._frames = self._decode(stream)
            try:
                first = next(self._frames)
            except StopIteration:
                raise ValueError(f"{name}: not a decodable video: no frame in the stream") from None
            except av.error.FFmpegError as err:
                raise ValueError(f"{name}: not a decodable video: {err}") from err
            except IncompleteVideoError as err:
                reason = str(err).removeprefix(f"{name}: ")
                raise IncompleteVideoError(f"{name}: not a decodable video: {reason}") from err
        except BaseException:
            self._container.close()
            raise
        self._first = first
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            log.warning("%s reports no frame rate; assuming %.0f fps", name, DEFAULT_FPS)
        scheme = name.split("://", 1)[0].lower() if is_url else ""
        self.rotation = quarter_turns(first.rotation) * 90
        if self.rotation:
            log.info("%s is tagged to be shown turned by %d degrees", name, self.rotation)
        sideways = self.rotation in (90, 270)
        self.info = SourceInfo(
            name=name,
            fps=float(rate) if rate else DEFAULT_FPS,
            width=first.height if sideways else first.width,
            height=first.width if sideways else first.height,
            frame_count=stream.frames or None,
            audio=_audio_track(self._container, name) if not is_url else None,
            live=scheme in LIVE_URL_SCHEMES or (is_url and self._container.duration is None),
        )

    def _decode(self, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        """Demux and decode by hand: with frame threading, `container.decode` drops the
        decoder's error on a cut-off last packet, so a damaged packet is caught here; the
        frames the decoder still holds then are flushed out first, as they are intact. Audio
        packets are read only for how far the file's data reaches (`_data_end`)."""
        packets = 0
        for packet in self._container.demux(stream, *self._container.streams.audio):
            if packet.pts is not None and packet.time_base is not None:
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                self._data_end = max(end, self._data_end or end)
            if packet.stream is not stream:
                continue
            packets += packet.size > 0
            if packet.is_corrupt:
                of = f" of {self._expected}" if self._expected else ""
                for held in stream.decode(None):  # flushed frames come without a time base
                    held.time_base = stream.time_base
                    yield held
                raise IncompleteVideoError(
                    f"{self._name}: the data ends or is damaged at frame {packets}{of} "
                    "(a cut-off or damaged file)"
                )
            if packet.is_discard:  # decoded for reference only (edit lists), never shown
                self._discarded += 1
            yield from packet.decode()

    def _read(self) -> Iterator[Frame]:
        fps = self.info.fps
        frames = self._frames
        yield self._convert(0, self._first, fps)
        self._first = None
        index, damaged = 0, []  # frames the decoder patched up, not yet followed by a sound one
        for frame in frames:  # (a file cut inside a frame ends in such a frame)
            if frame.is_corrupt and len(damaged) < _HELD_DAMAGED:
                damaged.append(frame)
                continue
            for held in (*damaged, frame):
                index += 1
                yield self._convert(index, held, fps)
            damaged = []
        expected = self._expected and self._expected - self._discarded
        if self._stop.is_set():
            return
        if damaged:
            raise IncompleteVideoError(
                f"{self.info.name}: the data breaks off inside frame {index + 2} (it decodes "
                "damaged; a cut-off or damaged file)"
            )
        if expected and index + 1 < expected:
            raise IncompleteVideoError(
                f"{self.info.name}: the file ends after frame {index + 1} but its header lists "
                f"{expected} frames (a cut-off file)"
            )
        if not expected:
            self._check_duration(index + 1)

    def _check_duration(self, frames: int) -> None:
        """A container without a frame count (Matroska, WebM, MPEG-TS): the duration its header
        lists must be reached by the packets read (of the video or the audio), to within two
        frames. A cut-off file's data stops short of it."""
        container = self._container
        if container.duration is None or self._data_end is None:
            return
        listed = ((container.start_time or 0) + container.duration) / av.time_base
        if self._data_end < listed - max(2 / self.info.fps, 0.1):
            raise IncompleteVideoError(
                f"{self.info.name}: the data ends at {self._data_end:.2f} s (frame {frames}) "
                f"but the container lists {listed:.2f} s (a cut-off file)"
            )

    @staticmethod
    def _convert(index: int, frame: av.VideoFrame, fps: float) -> Frame:
        pts = frame.time if frame.time is not None else index / fps
        image = turn(frame.to_ndarray(format="rgb24"), quarter_turns(frame.rotation))
        return Frame(index, float(pts), image, time.monotonic())

    def _release(self) -> None:
        self._container.close()


def _audio_track(container: av.container.InputContainer, name: str) -> AudioTrack | None:
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    return AudioTrack(
        path=name,
        stream_index=stream.index,
        codec=ctx.codec.canonical_name,
        sample_rate=ctx.sample_rate,
        channels=ctx.channels,
    )


class CameraSource(FrameSource):
    """A webcam through OpenCV: an int index or a device path such as /dev/video0.

    pts are seconds since the first frame. In batch mode the reader waits for the consumer
    and the camera driver drops what it cannot buffer.
    """

    def __init__(
        self,
        device: int | str,
        realtime: bool,
        queue_size: int = 8,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
    ) -> None:
        """`size` (width, height) and `fps` are asked of the camera; what it gave is logged."""
        super().__init__(realtime, queue_size)
        self._capture = cv2.VideoCapture(device)
        if self._capture.isOpened():
            if size is not None:
                self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
                self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
            if fps is not None:
                self._capture.set(cv2.CAP_PROP_FPS, fps)
        ok, image = self._capture.read() if self._capture.isOpened() else (False, None)
        if not ok or image is None:
            self._capture.release()
            raise ValueError(f"cannot open camera {device!r} (no such device, busy, or no frame)")
        fps_given = self._capture.get(cv2.CAP_PROP_FPS)
        asked = f"asked for {size[0]}x{size[1]}" if size else "no size asked"
        asked += f" at {fps:g} fps" if fps else ""
        log.info("camera %s: %s, gives %dx%d at %.4g fps", device, asked, image.shape[1],
                 image.shape[0], fps_given)  # fmt: skip
        fps = fps_given
        self._first = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        self._start = time.monotonic()
        self.info = SourceInfo(
            name=f"camera {device}",
            fps=fps if fps > 0 else DEFAULT_FPS,
            width=image.shape[1],
            height=image.shape[0],
            frame_count=None,
            audio=None,
            live=True,
        )

    def _read(self) -> Iterator[Frame]:
        yield Frame(0, 0.0, self._first, self._start)
        self._first = None
        index = 1
        while not self._stop.is_set():
            ok, image = self._capture.read()
            now = time.monotonic()
            if not ok:
                raise OSError(f"{self.info.name} stopped delivering frames")
            yield Frame(index, now - self._start, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), now)
            index += 1

    def _release(self) -> None:
        self._capture.release()


def open_source(
    spec: str | int | Path,
    realtime: bool,
    *,
    queue_size: int = 8,
    playback_rate: float = 1.0,
    folder_fps: float = DEFAULT_FPS,
    timeout: float = 10.0,
    camera_size: tuple[int, int] | None = None,
    camera_fps: float | None = None,
) -> FrameSource:
    """Open the right source for `spec`.

    Args:
        spec: an int or a digit string (camera index), "/dev/videoN" (camera), a URL with a
            scheme (stream via PyAV), a folder (images), or a video file path.
        realtime: keep only the newest frame and count drops (see the module docstring).
        queue_size: frames buffered in batch mode.
        playback_rate: realtime playback speed of files relative to their frame rate;
            `float("inf")` reads as fast as decoding goes.
        folder_fps: frame rate given to image folders.
        timeout: seconds a stream may take to open, and to deliver data once open.
        camera_size, camera_fps: (width, height) and frame rate asked of a camera.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a decodable video, a folder without images, a camera
            or stream that cannot be opened.
    """
    if isinstance(spec, bool) or not isinstance(spec, (str, int, Path)):
        raise TypeError(f"source must be a path, URL or camera index, got {type(spec).__name__}")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return CameraSource(int(spec), realtime, queue_size, camera_size, camera_fps)
    text = str(spec)
    if _CAMERA_DEVICE.match(text):
        return CameraSource(text, realtime, queue_size, camera_size, camera_fps)
    if isinstance(spec, str) and "://" in text:
        return VideoSource(text, realtime, queue_size, playback_rate, timeout)
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path, realtime, queue_size, fps=folder_fps)
    if not path.exists():
        raise FileNotFoundError(f"source not found: {path}")
    return VideoSource(path, realtime, queue_size, playback_rate)
