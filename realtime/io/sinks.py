"""Output writers: H.264 mp4 (with the source's audio copied), JSON Lines poses, COCO results,
rendered images.

Every writer is a context manager that writes to a hidden temporary file next to its final
path and renames it into place only when it closes cleanly; if the block raises, the temporary
file is deleted. A crash therefore never leaves a truncated file under the final name
(`realtime.io.atomic_files`).

    with Mp4Writer("out/clip.mp4", fps=source.info.fps, audio=source.info.audio) as video, \\
         JsonlWriter("out/clip.jsonl") as poses_out:
        for frame in source:
            ...
            video.write(rendered, frame.pts)
            poses_out.write(poses)
"""

from __future__ import annotations

import json
import logging
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import cv2
import numpy as np

from ccm.poses import FramePoses, coco_keypoint_results, dump_json
from realtime.io.atomic_files import AtomicPath, WholeOrNothing
from realtime.io.frames import AudioTrack

log = logging.getLogger(__name__)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image atomically; the format follows the suffix of `path`
    (.png, .jpg/.jpeg, .webp, .bmp, .tif/.tiff)."""
    file = AtomicPath(path)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{file.final}: images must be (H, W, 3) uint8 RGB, got {image.shape}")
    try:
        ok, data = cv2.imencode(file.final.suffix.lower(), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"{file.final}: OpenCV cannot write {file.final.suffix} images")
    return file.write(lambda fh: fh.write(data.tobytes()))


ENCODER_THREADS = 2


class Mp4Writer(WholeOrNothing):
    """H.264 (libx264, yuv420p, BT.709) mp4 at the source's frame rate, audio copied as is.

    Frames keep their pts (exact on the 1/fps grid, else to 1/90000 s), so a variable frame
    rate and a live source's gaps and dropped frames keep their timing. Odd widths or heights
    are padded by one edge pixel on the right / bottom (yuv420p needs even sizes).

    Args:
        path: the final .mp4 path; its folder must exist.
        fps: frame rate (`SourceInfo.fps`); 29.97 and the like are recovered as 30000/1001.
        audio: the source's audio stream (`SourceInfo.audio`); its packets are remuxed up to
            the end of the last written frame. A codec mp4 cannot hold is skipped with a warning.
        crf: x264 constant rate factor (lower = better; 18-23 is visually near lossless).
        preset: x264 speed preset.
        comment: the container's comment tag (what the video was made from).
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        *,
        audio: AudioTrack | None = None,
        crf: int = 20,
        preset: str = "veryfast",
        comment: str | None = None,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self._file = AtomicPath(path)
        self.path = self._file.final
        self.rate = Fraction(fps).limit_denominator(1001)
        self._time_base = _time_base(self.rate)
        self._frame_ticks = round(1 / (self.rate * self._time_base))  # one frame period
        self._crf, self._preset = crf, preset
        self._video: av.VideoStream | None = None
        self._size: tuple[int, int] | None = None  # (height, width) of the frames given
        self._last_tick = -1
        self.frames_written = 0
        self._closed = False
        self._audio_in: av.container.InputContainer | None = None
        # moov first, so browsers (the Gradio download) can play while loading.
        self._out = av.open(
            str(self._file.temp), "w", format="mp4", options={"movflags": "+faststart"}
        )
        if comment is not None:
            self._out.metadata["comment"] = comment
        try:
            if audio is not None:
                self._open_audio(audio)
        except BaseException:
            self.abort()
            raise

    def _open_audio(self, track: AudioTrack) -> None:
        if track.codec not in self._out.supported_codecs:
            log.warning(
                "%s: audio codec %s cannot go in mp4; writing video only", track.path, track.codec
            )
            return
        self._audio_in = av.open(track.path)
        self._audio_src = self._audio_in.streams[track.stream_index]
        self._audio_packets = self._audio_in.demux(self._audio_src)
        self._pending_audio: av.Packet | None = None

    def _open_video(self, height: int, width: int) -> None:
        stream = self._out.add_stream("libx264", rate=self.rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = self._time_base
        stream.codec_context.colorspace = av.video.reformatter.Colorspace.ITU709
        stream.codec_context.color_range = av.video.reformatter.ColorRange.MPEG
        stream.codec_context.color_primaries = av.video.reformatter.ColorPrimaries.BT709
        stream.codec_context.color_trc = av.video.reformatter.ColorTrc.BT709
        stream.options = {"crf": str(self._crf), "preset": self._preset}
        # x264 cuts each frame into one slice per thread, so the bytes depend on the count: a
        # fixed count writes the same file for the same input on any machine or worker.
        stream.codec_context.thread_count = ENCODER_THREADS
        if width % 2 or height % 2:
            log.info(
                "%s: padding %dx%d to even %dx%d for yuv420p",
                *(self.path, width, height, stream.width, stream.height),
            )
        # Every stream has to exist before the first packet is muxed.
        self._audio_out = (
            self._out.add_stream_from_template(self._audio_src) if self._audio_in else None
        )
        self._video = stream
        self._size = (height, width)

    def write(self, image: np.ndarray, pts: float | None = None) -> None:
        """Append one frame.

        Args:
            image: (H, W, 3) uint8 RGB in image pixels; every frame must have the first's size.
            pts: presentation time in seconds; None places it one frame after the previous.
        """
        if self._closed:
            raise ValueError(f"{self.path}: write after close")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: frames must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
            )
        height, width = image.shape[:2]
        if self._video is None:
            self._open_video(height, width)
        elif (height, width) != self._size:
            raise ValueError(
                f"{self.path}: frame size {width}x{height} differs from the first frame's "
                f"{self._size[1]}x{self._size[0]}"
            )
        if width % 2 or height % 2:
            image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        after = self._last_tick + self._frame_ticks if self._last_tick >= 0 else 0
        tick = after if pts is None else round(Fraction(pts) / self._time_base)
        tick = max(tick, self._last_tick + 1)  # mp4 needs them strictly increasing
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame = frame.reformat(
            format="yuv420p",
            dst_colorspace="ITU709",
            dst_color_range="MPEG",
            dst_color_primaries=av.video.reformatter.ColorPrimaries.BT709,
            dst_color_trc=av.video.reformatter.ColorTrc.BT709,
        )
        frame.pts, frame.time_base = tick, self._time_base
        self._last_tick = tick
        self._mux_audio_until(tick * self._time_base)
        for packet in self._video.encode(frame):
            self._out.mux(packet)
        self.frames_written += 1

    def _mux_audio_until(self, seconds: Fraction) -> None:
        """Remux source audio packets that start before `seconds` (interleaved with video)."""
        if self._audio_in is None:
            return
        while True:
            packet = self._pending_audio or next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                self._audio_in.close()
                self._audio_in = None
                return
            if packet.dts is None:  # the demuxer's empty flush packet
                continue
            start = packet.pts if packet.pts is not None else packet.dts
            if start * packet.time_base >= seconds:
                self._pending_audio = packet
                return
            packet.stream = self._audio_out
            self._out.mux(packet)

    def close(self) -> None:
        """Flush the encoder, finish the file and move it to its final path."""
        if self._closed:
            return
        self.finish()
        self.commit()

    def finish(self) -> None:
        """Flush the encoder and finish the temporary file (deleted on failure); `commit`."""
        try:
            if self._video is None:
                raise ValueError(f"{self.path}: no frames were written")
            for packet in self._video.encode(None):
                self._out.mux(packet)
            self._mux_audio_until((self._last_tick + self._frame_ticks) * self._time_base)
            self._out.close()
            self._closed = True
        except BaseException:
            self.abort()
            raise
        finally:
            self._close_audio()

    def commit(self) -> None:
        """Move the finished file to its final path."""
        self._file.commit()
        log.info("wrote %s (%d frames)", self.path, self.frames_written)

    def keep_as(self, path: str | Path) -> None:
        """On close, move the file to `path` (same folder) instead of the path given."""
        self.path = self._file.retarget(path)

    def _close_audio(self) -> None:
        if self._audio_in is not None:
            self._audio_in.close()
            self._audio_in = None

    def abort(self) -> None:
        """Drop the output: close everything and delete the temporary file."""
        self._closed = True
        self._close_audio()
        try:
            self._out.close()
        except Exception:  # the file is being thrown away; its trailer does not matter
            log.debug("closing the aborted %s failed", self._file.temp, exc_info=True)
        self._file.discard()


def _time_base(rate: Fraction) -> Fraction:
    """1/N s, N a multiple of 90000 and of the rate's numerator: k / rate is exact for all k."""
    ticks = math.lcm(90000, rate.numerator)
    return Fraction(1, ticks if ticks <= 10**7 else 90000)


class _AtomicTextWriter(WholeOrNothing):
    """A text file written through `AtomicPath`; the base of the JSON writers."""

    def __init__(self, path: str | Path) -> None:
        self._file = AtomicPath(path)
        self.path = self._file.final
        self._fh: TextIO | None = open(self._file.temp, "x", encoding="utf-8")  # noqa: SIM115

    def _finish(self) -> None:
        """Write what remains before the rename (subclasses)."""

    def keep_as(self, path: str | Path) -> None:
        """On close, move the file to `path` (same folder) instead of the path given."""
        self.path = self._file.retarget(path)

    def close(self) -> None:
        if self._fh is None:
            return
        self.finish()
        self.commit()

    def finish(self) -> None:
        """Write the rest and close the temporary file, not yet under its final name."""
        try:
            self._finish()
            self._fh.close()  # flushes: where a full disk shows
            self._fh = None
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        self._file.commit()

    def abort(self) -> None:
        """Drop the output: the temporary file goes even when closing it fails (a full disk)."""
        try:
            if self._fh is not None:
                fh, self._fh = self._fh, None
                fh.close()
        except OSError:
            log.debug("closing the aborted %s failed", self._file.temp, exc_info=True)
        finally:
            self._file.discard()


class JsonlWriter(_AtomicTextWriter):
    """One `FramePoses.to_json()` line per frame (the schema in ccm/poses.py)."""

    def write(self, poses: FramePoses) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: write after close")
        self._fh.write(poses.to_json() + "\n")


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as one JSON document, atomically."""
    return AtomicPath(path).write(lambda fh: dump_json(data, fh), text=True)


class ImagePosesWriter(_AtomicTextWriter):
    """One line per image: `{"image": name, "width": W, "height": H, "poses": [...]}`, the
    poses in the video schema (`FramePoses.to_dict()["poses"]`, image pixels)."""

    def write(self, image: str, width: int, height: int, poses: FramePoses) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: write after close")
        record = {
            "image": image, "width": int(width), "height": int(height),
            "poses": poses.to_dict()["poses"],
        }  # fmt: skip
        self._fh.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")


class CocoResultsWriter(_AtomicTextWriter):
    """COCO keypoint results, the list `COCO.loadRes` reads:

        [{"image_id": int, "category_id": 1, "keypoints": [x, y, s] * K, "score": float}]

    Keypoints are in image pixels (the pixel-centre convention COCO annotations use too);
    the score is `FramePoses.scores`. The mapping from frames to image ids is the caller's.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._results: list[dict[str, Any]] = []

    def write(self, image_id: int, poses: FramePoses) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: write after close")
        p = poses.numpy()
        try:
            rows = coco_keypoint_results(np.full(len(p), image_id), p.keypoints, p.scores)
        except ValueError as err:
            raise ValueError(f"{self.path}: image {image_id}: {err}") from None
        self._results.extend(rows)

    def __len__(self) -> int:
        return len(self._results)

    def _finish(self) -> None:
        dump_json(self._results, self._fh)
