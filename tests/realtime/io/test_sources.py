"""Frame sources: the bundled clip, batch vs realtime buffering, folders, and clear errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from realtime.io.frames import FrameSource, IncompleteVideoError
from realtime.io.images import ImageFolderSource, read_image
from realtime.io.sources import CameraSource, VideoSource, open_source
from realtime.samples import VTEST_SHORT

CLIP_FRAMES = 50


def _wait_for(condition, what: str, limit: float = 30.0) -> None:
    """Poll until `condition()` holds; the limit only turns a hang into a failure."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def test_bundled_clip_metadata_and_frames():
    with open_source(VTEST_SHORT, realtime=False) as source:
        assert isinstance(source, VideoSource)
        info = source.info
        assert (info.fps, info.width, info.height, info.frame_count) == (10.0, 768, 576, 50)
        assert info.audio is None and not info.live
        frames = list(source)
    assert [f.index for f in frames] == list(range(CLIP_FRAMES))
    np.testing.assert_allclose([f.pts for f in frames], np.arange(CLIP_FRAMES) / 10.0, atol=1e-9)
    image = frames[0].image
    assert image.shape == (576, 768, 3) and image.dtype == np.uint8
    assert image.flags.c_contiguous
    # RGB order: OpenCV decodes the same clip to BGR.
    capture = cv2.VideoCapture(str(VTEST_SHORT))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    assert np.abs(image.astype(np.int16) - bgr[..., ::-1]).mean() < 0.5
    assert source.dropped == 0


def test_batch_mode_slow_consumer_gets_every_frame():
    queue_size = 2
    received = []
    with open_source(VTEST_SHORT, realtime=False, queue_size=queue_size) as source:
        for frame in source:
            received.append(frame.index)
            # The reader blocks on the full buffer: it is never more than queue_size ahead.
            assert source.produced - len(received) <= queue_size
            if len(received) <= 10:
                time.sleep(0.01)
        assert source.dropped == 0
    assert received == list(range(CLIP_FRAMES))


@pytest.mark.parametrize("playback_rate", [float("inf"), 25.0])
def test_realtime_slow_consumer_gets_newest_frame_and_counts_drops(playback_rate):
    received = []
    with open_source(VTEST_SHORT, realtime=True, playback_rate=playback_rate) as source:
        while True:
            newest = source.produced - 1  # the newest frame the reader has handed over so far
            try:
                frame = next(source)
            except StopIteration:
                break
            # Bounded latency: never a frame older than the newest one at the time of asking.
            assert frame.index >= newest
            received.append(frame.index)
            # A slow consumer: let the reader get two frames ahead before asking again.
            _wait_for(lambda i=frame.index: source.produced >= i + 3 or source.finished, "reader")
        dropped, produced = source.dropped, source.produced
    assert produced == CLIP_FRAMES
    assert received[-1] == CLIP_FRAMES - 1  # the last frame is never dropped
    assert received == sorted(set(received))
    # Each wait let two newer frames arrive, so at least one was dropped in between (except
    # before the last frame, which may arrive alone).
    assert all(b - a >= 2 for a, b in zip(received[:-2], received[1:-1], strict=True))
    assert dropped == CLIP_FRAMES - len(received) > 0


def test_realtime_consumer_that_wakes_after_the_end_gets_only_the_last_frame():
    source = open_source(VTEST_SHORT, realtime=True, playback_rate=float("inf"))
    with source:
        first = next(source)
        _wait_for(lambda: source.finished, "the reader to finish")
        rest = [f.index for f in source]
    assert first.index == 0 and rest == [CLIP_FRAMES - 1]
    assert source.dropped == CLIP_FRAMES - 2


def test_image_folder_natural_order_and_rgb(tmp_path: Path):
    for n in (10, 2, 1):
        bgr = np.zeros((6, 8, 3), np.uint8)
        bgr[..., 0], bgr[..., 1], bgr[..., 2] = n, 100, 200
        assert cv2.imwrite(str(tmp_path / f"img{n}.png"), bgr)
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(tmp_path, realtime=False, folder_fps=5.0) as source:
        assert isinstance(source, ImageFolderSource)
        info = source.info
        assert (info.width, info.height, info.frame_count, info.fps) == (8, 6, 3, 5.0)
        frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.2, 0.4], abs=1e-12)
    # Natural order (1, 2, 10) and RGB: the blue channel written by OpenCV comes last.
    assert [tuple(f.image[0, 0]) for f in frames] == [(200, 100, 1), (200, 100, 2), (200, 100, 10)]


def test_missing_path_names_it(tmp_path: Path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        open_source(missing, realtime=False)
    with pytest.raises(FileNotFoundError, match="nope_dir"):
        ImageFolderSource(tmp_path / "nope_dir", realtime=False)


def test_random_bytes_are_not_a_video(tmp_path: Path):
    bad = tmp_path / "random.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="random.mp4: not a decodable video"):
        open_source(bad, realtime=False)


def test_truncated_mp4_names_the_frame_it_breaks_at(tmp_path: Path):
    # 20 kB keeps the moov box (the clip is written moov-first) but cuts the first keyframe.
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(VTEST_SHORT.read_bytes()[:20_000])
    with pytest.raises(
        IncompleteVideoError,
        match="truncated.mp4: not a decodable video: the data ends or is damaged at frame 1 of 50",
    ):
        open_source(bad, realtime=False)


def test_empty_folder_names_it(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"{tmp_path}: no images"):
        open_source(tmp_path, realtime=True)


@pytest.mark.parametrize("spec", [97, "97", "/dev/video97"])
def test_unreadable_camera(spec):
    with pytest.raises(ValueError, match="cannot open camera"):
        open_source(spec, realtime=True)


def test_bad_spec_type():
    with pytest.raises(TypeError, match="float"):
        open_source(1.5, realtime=True)  # type: ignore[arg-type]


def test_reader_thread_error_reaches_consumer(tmp_path: Path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((4, 4, 3), i, np.uint8))
    (tmp_path / "f2.png").write_bytes(b"not a png")  # the third frame cannot be read
    source = open_source(tmp_path, realtime=False)
    received = []
    with pytest.raises(RuntimeError, match="reading failed after 2 frames") as err, source:
        for frame in source:
            received.append(frame.index)
    assert received == [0, 1]  # frames read before the error are delivered first
    assert isinstance(err.value.__cause__, ValueError)
    assert "f2.png" in str(err.value.__cause__)


def test_decoder_error_reaches_consumer(monkeypatch):
    def failing_convert(index, frame, fps):
        if index == 5:
            raise MemoryError("decoder out of memory")
        return convert(index, frame, fps)

    convert = VideoSource._convert
    monkeypatch.setattr(VideoSource, "_convert", staticmethod(failing_convert))
    with open_source(VTEST_SHORT, realtime=False) as source:
        received = []
        with pytest.raises(RuntimeError, match="vtest_short.mp4: reading failed") as err:
            for frame in source:
                received.append(frame.index)
    assert received == [0, 1, 2, 3, 4]
    assert isinstance(err.value.__cause__, MemoryError)


def test_close_stops_the_reader_thread():
    source = open_source(VTEST_SHORT, realtime=False, queue_size=1)
    assert isinstance(source, FrameSource)
    with source:
        assert next(source).index == 0
        thread = source._thread
        assert thread is not None and thread.is_alive()  # blocked on the full buffer
    assert not thread.is_alive() and source.finished
    with pytest.raises(StopIteration):
        next(source)
    assert source.produced < CLIP_FRAMES


def test_camera_source_is_chosen_for_device_specs(monkeypatch):
    opened = []

    class FakeCapture:
        def __init__(self, device):
            opened.append(device)

        def isOpened(self):  # noqa: N802 (OpenCV's name)
            return True

        def read(self):
            return True, np.zeros((4, 6, 3), np.uint8)

        def get(self, prop):
            return 0.0  # many webcams report no frame rate

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    for spec in (0, "1", "/dev/video2"):
        with open_source(spec, realtime=True) as source:
            assert isinstance(source, CameraSource)
            assert (source.info.width, source.info.height, source.info.fps) == (6, 4, 30.0)
            assert source.info.live and source.info.frame_count is None
            assert next(source).image.shape == (4, 6, 3)
    assert opened == [0, 1, "/dev/video2"]


def _stored_frames(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """The frames as stored (PyAV, no rotation applied) and each frame's display rotation."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [f.rotation for f in frames]


@pytest.mark.parametrize("degrees", [-90, 90, 180])
def test_rotation_tag_gives_frames_as_displayed(tmp_path: Path, make_clip, degrees: int):
    # -90 is a portrait phone clip (the old "rotate=90" tag: turn clockwise to show it).
    path = make_clip(tmp_path / "tagged.mp4", frames=6, size=(48, 80), rotation=degrees)
    stored, rotations = _stored_frames(path)
    assert [r % 360 for r in rotations] == [degrees % 360] * 6  # PyAV reads 180 as -180
    assert stored[0].shape == (48, 80, 3)
    with open_source(path, realtime=False) as source:
        info = source.info
        frames = list(source)
    sideways = degrees in (-90, 90)
    assert (info.width, info.height) == ((48, 80) if sideways else (80, 48))
    assert source.rotation == degrees % 360
    assert len(frames) == 6
    for frame, raw in zip(frames, stored, strict=True):
        assert frame.image.flags.c_contiguous
        np.testing.assert_array_equal(frame.image, np.rot90(raw, k=degrees // 90))
    if degrees == -90:
        # The white square stored top-left shows top-right, as a player turns it ...
        first = frames[0].image
        assert first[3, -4].min() > 240 and first[3, 3].max() < 200
        # ... and OpenCV's own rotation handling (an independent reader) agrees.
        capture = cv2.VideoCapture(str(path))
        ok, bgr = capture.read()
        capture.release()
        assert ok and bgr.shape == (80, 48, 3)
        assert np.abs(bgr[..., ::-1].astype(int) - frames[0].image).mean() < 1.0


def test_cut_off_fast_start_mp4_fails_at_the_frame_it_breaks(tmp_path: Path, make_clip):
    full = make_clip(tmp_path / "full.mp4", frames=60, size=(64, 96), faststart=True)
    data = full.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # the header lists all 60 frames
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with av.open(str(cut)) as container:
        assert container.streams.video[0].frames == 60
    received = []
    with (
        pytest.raises(RuntimeError, match=r"cut.mp4: reading failed after \d+ frames: ") as err,
        open_source(cut, realtime=False) as source,
    ):
        for frame in source:
            received.append(frame.index)
    assert isinstance(err.value.__cause__, IncompleteVideoError)
    broke_at = int(re.search(r"damaged at frame (\d+) of 60", str(err.value)).group(1))
    assert 10 < broke_at < 50
    assert received == list(range(len(received))) and len(received) <= broke_at


def test_file_cut_between_frames_fails_on_the_header_count(tmp_path: Path, make_clip):
    full = make_clip(tmp_path / "full.mp4", frames=40, size=(48, 64), faststart=True)
    with av.open(str(full)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    end = packets[24][0] + packets[24][1]  # the last byte of frame 25: no packet is damaged
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[:end])
    with (
        pytest.raises(
            RuntimeError,
            match="cut.mp4: reading failed after 25 frames: the file ends after frame 25 but "
            r"its header lists 40 frames \(a cut-off file\)",
        ) as err,
        open_source(cut, realtime=False) as source,
    ):
        received = []
        for frame in source:
            received.append(frame.index)
    assert isinstance(err.value.__cause__, IncompleteVideoError)
    assert received == list(range(25))
    # The whole file reads to the end without complaint.
    with open_source(full, realtime=False) as source:
        assert len(list(source)) == 40


def _png_with_exif(path: Path, image: np.ndarray, orientation: int) -> Path:
    from PIL import Image

    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_applies_exif_orientation(tmp_path: Path, orientation: int):
    from PIL import Image, ImageOps

    image = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = _png_with_exif(tmp_path / "o.png", image, orientation)
    got = read_image(path)
    with Image.open(path) as pil:  # Pillow's own EXIF handling is the reference
        expected = np.asarray(ImageOps.exif_transpose(pil).convert("RGB"))
    assert got.shape == expected.shape == ((5, 7, 3) if orientation <= 4 else (7, 5, 3))
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous and got.dtype == np.uint8


def test_read_image_formats_all_give_rgb_uint8(tmp_path: Path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    # 16-bit: 65535 maps to 255, 257 * v to v, 32896 (= 128.0 * 257) to 128.
    deep = rgb.astype(np.uint16) * 257
    deep[0, 0] = (65535, 32896, 0)
    assert cv2.imwrite(str(tmp_path / "deep.png"), np.ascontiguousarray(deep[..., ::-1]))
    gray = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "gray.png"), gray)
    assert cv2.imwrite(str(tmp_path / "gray16.png"), gray.astype(np.uint16) * 257)
    alpha = np.zeros((6, 9), np.uint8)
    alpha[:, :3], alpha[:, 3:6] = 255, 51  # opaque, 20 %, transparent
    assert cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([bgr, alpha]))
    assert cv2.imwrite(str(tmp_path / "lossless.webp"), bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])
    y, x = np.mgrid[0:6, 0:9]
    smooth = np.dstack([60 + 8 * y, 60 + 8 * x, np.full_like(x, 80)]).astype(np.uint8)
    smooth_bgr = np.ascontiguousarray(smooth[..., ::-1])
    assert cv2.imwrite(str(tmp_path / "photo.jpg"), smooth_bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])

    expected_deep = rgb.copy()
    expected_deep[0, 0] = (255, 128, 0)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), expected_deep)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.dstack([gray] * 3))
    np.testing.assert_array_equal(read_image(tmp_path / "gray16.png"), np.dstack([gray] * 3))
    over_white = read_image(tmp_path / "rgba.png").astype(int)
    np.testing.assert_array_equal(over_white[:, :3], rgb[:, :3])
    np.testing.assert_array_equal(over_white[:, 6:], 255)
    np.testing.assert_array_equal(over_white[:, 3:6], np.round(rgb[:, 3:6] * 0.2 + 255 * 0.8))
    np.testing.assert_array_equal(read_image(tmp_path / "lossless.webp"), rgb)
    assert np.abs(read_image(tmp_path / "photo.jpg").astype(int) - smooth).mean() < 2
    for name in ("deep.png", "gray.png", "rgba.png", "photo.jpg"):
        image = read_image(tmp_path / name)
        assert image.shape == (6, 9, 3) and image.dtype == np.uint8 and image.flags.c_contiguous


def test_read_image_names_an_unreadable_file(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("broken.png", "empty.jpg"):
        with pytest.raises(ValueError, match=f"{name}: not a readable image"):
            read_image(tmp_path / name)
    with pytest.raises(ValueError, match="missing.png: cannot read the file"):
        read_image(tmp_path / "missing.png")
