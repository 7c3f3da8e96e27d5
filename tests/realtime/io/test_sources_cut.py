"""A cut-off file is never read as complete, in any container: Matroska / WebM (no frame count
in the header) by the duration the container lists, a file cut inside a frame by the damaged
frame it decodes to, and the frames the decoder still holds at a break are handed on."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from realtime.io.frames import IncompleteVideoError
from realtime.io.sources import open_source


def write_noisy_clip(path: Path, frames: int, codec: str, audio_s: float = 0.0) -> Path:
    """Random-noise frames (64x80 at 10 fps: large packets, so a cut lands inside a frame) in
    the container `path`'s suffix names; with `audio_s`, that many seconds of AAC / Opus too."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=10)
        video.width, video.height, video.pix_fmt = 80, 64, "yuv420p"
        if codec == "libx264":
            video.options = {"preset": "ultrafast", "crf": "18"}
        sound = None
        if audio_s:
            sound = container.add_stream("libopus" if path.suffix == ".webm" else "aac", 48000)
        for i in range(frames):
            image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            chunk, total = 960, int(audio_s * 48000)
            for start in range(0, total, chunk):
                samples = np.zeros((1, chunk), dtype=np.float32)
                block = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                block.sample_rate, block.pts = 48000, start
                container.mux(sound.encode(block))
            container.mux(sound.encode())
    return path


def _read(path: Path) -> tuple[list[int], BaseException | None]:
    received: list[int] = []
    try:
        with open_source(path, realtime=False) as source:
            for frame in source:
                received.append(frame.index)
    except RuntimeError as err:
        return received, err.__cause__
    return received, None


def _cut(full: Path, fraction: float = 0.5) -> Path:
    data = full.read_bytes()
    cut = full.with_name("cut" + full.suffix)
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".webm", "libvpx-vp9"), (".mkv", "libx264"), (".mkv", "libvpx-vp9")]
)
def test_matroska_cut_in_half_stops_short_of_its_listed_duration(tmp_path, suffix, codec):
    full = write_noisy_clip(tmp_path / f"full{suffix}", 30, codec)
    assert _read(full) == (list(range(30)), None)
    received, error = _read(_cut(full))
    assert isinstance(error, IncompleteVideoError)
    match = re.search(r"the data ends at ([\d.]+) s \(frame (\d+)\) but the container lists "
                      r"3.00 s \(a cut-off file\)", str(error))  # fmt: skip
    assert match is not None, str(error)
    assert 3 <= len(received) <= 20 and received == list(range(len(received)))
    assert int(match.group(2)) == len(received)
    assert float(match.group(1)) == pytest.approx(len(received) / 10, abs=1e-6)


def test_audio_that_outlasts_the_video_is_not_a_cut(tmp_path):
    # 2 s of video and 3 s of audio: the container lists 3 s, the audio packets reach it.
    full = write_noisy_clip(tmp_path / "full.mkv", 20, "libx264", audio_s=3.0)
    with av.open(str(full)) as container:
        assert container.duration / av.time_base == pytest.approx(3.0, abs=0.05)
    assert _read(full) == (list(range(20)), None)
    received, error = _read(_cut(full, 0.4))
    assert isinstance(error, IncompleteVideoError) and "container lists 3.0" in str(error)
    assert 0 < len(received) < 20


def test_mpeg_ts_cut_inside_a_frame_ends_in_the_damaged_frame(tmp_path):
    full = write_noisy_clip(tmp_path / "full.ts", 24, "libx264")
    assert _read(full) == (list(range(24)), None)
    received, error = _read(_cut(full))
    assert isinstance(error, IncompleteVideoError)
    match = re.search(r"the data breaks off inside frame (\d+) \(it decodes damaged", str(error))
    assert match is not None, str(error)
    assert received == list(range(int(match.group(1)) - 1)) and 8 <= len(received) <= 13


def test_frames_the_decoder_holds_at_a_break_are_kept(tmp_path, make_clip):
    # A fast-start mp4 cut in half: the damaged packet is frame N; frames 1..N-1 are intact and
    # all handed on (the threaded decoder still held a few of them when the packet came).
    full = make_clip(tmp_path / "full.mp4", frames=60, size=(64, 96), faststart=True)
    received, error = _read(_cut(full))
    assert isinstance(error, IncompleteVideoError)
    broke_at = int(re.search(r"damaged at frame (\d+) of 60", str(error)).group(1))
    assert 10 < broke_at < 50 and received == list(range(broke_at - 1))
    with open_source(full, realtime=False) as source:
        expected_pts = [frame.pts for frame, _ in zip(source, received, strict=False)]
    with pytest.raises(RuntimeError), open_source(_cut(full), realtime=False) as source:
        pts = []
        for frame in source:
            pts.append(frame.pts)
    assert pts == pytest.approx(expected_pts, abs=1e-9)  # the flushed ones keep their times
