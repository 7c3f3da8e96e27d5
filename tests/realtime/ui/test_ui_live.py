"""The live webcam route without a browser: frame messages, pose records, places, pixel limits.

The route is mounted on a bare FastAPI app and driven with Starlette's test client; a tiny
random-weight pose model and a random YOLO (conf 0, at most 3 boxes) find some "people".
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

# gradio is optional on a GPU machine; without it this module is skipped, not an error.
pytest.importorskip("gradio")
import gradio as gr
from fastapi import FastAPI
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from ui_server import tiny_options

from realtime.stream.assemble import build_pipeline
from realtime.stream.serving import PipelineCache, ServerBusy, ServingWorker
from realtime.ui.live import FrameRefused, _jpeg_size, decode_frame, mount_live
from realtime.ui.media import TooManyPixels, check_pixels, limit_malloc_arenas
from realtime.ui.sessions import PoseApp
from realtime.ui.settings import Controls, UiConfig


def jpeg(image: np.ndarray, progressive: bool = False) -> bytes:
    flags = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), flags)
    assert ok
    return data.tobytes()


def message(index: int, shown_ms: float, image: np.ndarray) -> bytes:
    return struct.pack("<Id", index, shown_ms) + jpeg(image)


def scene(height: int = 180, width: int = 320) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    options = tiny_options(tmp_path_factory.mktemp("weights") / "tiny.safetensors")
    pipeline = build_pipeline(options)
    engines = PipelineCache(pipeline, options.pose)
    defaults = Controls(options.pose, 1, True, "parabola", "kalman")
    return engines, defaults, tmp_path_factory.mktemp("jobs")


@pytest.fixture
def app(setup):
    engines, defaults, jobs = setup
    pose_app = PoseApp(engines, defaults, UiConfig(max_streams=1, max_pixels=400_000), jobs)
    yield pose_app
    pose_app.close()


def test_a_frame_message_decodes_to_its_index_time_and_pixels():
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, 32:] = (200, 100, 50)
    index, shown, decoded = decode_frame(message(7, 1234.5, image), max_pixels=10_000)
    assert (index, shown) == (7, 1234.5)
    assert decoded.shape == (48, 64, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded[:, 36:].astype(int) - (200, 100, 50)).max() <= 4  # RGB, not BGR
    assert np.abs(decoded[:, :28].astype(int)).max() <= 4
    assert _jpeg_size(jpeg(scene(37, 91), progressive=True)) == (91, 37)


def test_frames_that_are_no_jpeg_or_too_large_are_refused_in_words():
    png = cv2.imencode(".png", scene(8, 8))[1].tobytes()
    with pytest.raises(FrameRefused, match="must be a JPEG"):
        decode_frame(struct.pack("<Id", 0, 0.0) + png, 10_000)
    with pytest.raises(FrameRefused, match="12-byte header"):
        decode_frame(b"\xff\xd8", 10_000)
    with pytest.raises(TooManyPixels, match=r"320x180 pixels \(0\.1 megapixels\); .* 0\.05 meg"):
        decode_frame(message(0, 0.0, scene()), 50_000)


def test_the_route_answers_each_frame_with_a_json_lines_record(app):
    server = FastAPI()
    mount_live(server, app)
    session = app.new_session()
    client = TestClient(server)
    assert "requestVideoFrameCallback" in client.get("/live/live.js").text
    with client.websocket_connect(f"/live/ws?session={session.token}") as ws:
        hello = ws.receive_json()["hello"]
        assert hello["keypoint_thr"] == 0.3 and len(hello["limbs"]) == len(hello["limb_colors"])
        records = []
        for index, shown in ((5, 1000.0), (6, 1033.25), (9, 1250.5)):
            ws.send_bytes(message(index, shown, scene()))
            records.append(ws.receive_json())
    assert [r["frame"] for r in records] == [5, 6, 9]
    assert [r["pts"] for r in records] == [0.0, 0.0333, 0.2505]  # s since frame 5, rounded
    assert set(records[0]) == {"frame", "pts", "poses"}
    people = [p for r in records for p in r["poses"]]
    assert people and all(len(p["keypoints"]) == 17 and len(p["box"]) == 4 for p in people)
    assert all(len(k) == 3 for p in people for k in p["keypoints"])
    assert any(p["track_id"] >= 0 for p in people)  # tracked: the session's kalman smoothing
    assert app.worker.live_streams() == 0  # the closed connection gave its place back


def test_a_frame_that_arrives_after_a_newer_one_is_skipped_and_the_stream_goes_on(app):
    server = FastAPI()
    mount_live(server, app)
    with TestClient(server).websocket_connect("/live/ws") as ws:
        ws.receive_json()  # hello
        answers = []
        # 1 overtook 0 (the page's first JPEG is slow to encode); 3 has an older time than 2
        for index, shown in ((1, 1033.0), (0, 1000.0), (2, 1066.0), (3, 1050.0), (4, 1100.0)):
            ws.send_bytes(message(index, shown, scene()))
            answers.append(ws.receive_json())
    assert answers[1] == {"skipped": 0} and answers[3] == {"skipped": 3}
    taken = [answers[i] for i in (0, 2, 4)]
    assert [a["frame"] for a in taken] == [1, 2, 4]
    assert [a["pts"] for a in taken] == [0.0, 0.033, 0.067]  # s since frame 1, rounded


def test_a_visitor_beyond_the_limit_is_told_once_and_never_takes_a_place(app):
    server = FastAPI()
    mount_live(server, app)
    client = TestClient(server)
    with client.websocket_connect("/live/ws") as first:
        assert "hello" in first.receive_json()
        with client.websocket_connect("/live/ws") as second:
            refusal = second.receive_json()
            assert refusal["fatal"] and "already showing 1 webcam, its most" in refusal["error"]
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_json()
            assert closed.value.code == 1013
        first.send_bytes(message(0, 0.0, scene()))  # the first keeps its place and its answers
        assert first.receive_json()["frame"] == 0
    with client.websocket_connect("/live/ws") as third:  # the place is free again
        assert "hello" in third.receive_json()


def test_a_frame_over_the_pixel_limit_ends_the_stream_with_a_sentence(app):
    server = FastAPI()
    mount_live(server, app)
    with TestClient(server).websocket_connect("/live/ws") as ws:
        ws.receive_json()
        ws.send_bytes(message(0, 0.0, scene(720, 1280)))
        refusal = ws.receive_json()
        assert refusal["fatal"]
        assert refusal["error"] == (
            "This frame was refused: The picture is 1280x720 pixels (0.9 megapixels); this "
            "page takes at most 0.4 megapixels."
        )
    assert app.worker.live_streams() == 0


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (8-bit RGB) and holds no pixels: a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_images_over_the_pixel_limit_are_refused_before_decoding(app, tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(20000, 20000))
    with pytest.raises(gr.Error, match="over 179 megapixels; this page takes at most 0.4 meg"):
        app.predict_image(str(huge))
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), np.zeros((10, 50_000, 3), np.uint8))
    with pytest.raises(gr.Error) as refused:
        app.predict_image(str(wide))
    assert refused.value.message == (
        "The picture is 50000x10 pixels (0.5 megapixels); this page takes at most 0.4 megapixels."
    )
    assert refused.value.print_exception is False  # one log line, no traceback
    with pytest.raises(gr.Error, match="Upload an image first") as missing:
        app.predict_image(None)
    assert missing.value.print_exception is False
    with pytest.raises(gr.Error, match="1280x720 pixels"):
        app.webcam_frame(np.zeros((720, 1280, 3), np.uint8), None)
    notes = tmp_path / "notes.png"  # no image at all: the header check lets the decoder say so
    notes.write_text("not an image\n")
    with pytest.raises(gr.Error, match="not an image this page can read"):
        app.predict_image(str(notes))


def test_a_held_place_is_kept_however_quiet_until_it_is_ended():
    class NoEngines:  # places only: no frame is served
        def warm_up_here(self) -> None:
            pass

    worker = ServingWorker(NoEngines(), max_streams=1, live_s=0.0)  # type: ignore[arg-type]
    try:
        worker.open_stream(1)
        with pytest.raises(ServerBusy):
            worker.open_stream(2)  # quiet for longer than live_s, still held
        worker.end_stream(1)
        worker.open_stream(2)
        assert worker.live_streams() == 1
    finally:
        worker.close()
    check_pixels(100, 100, 10_000)
    with pytest.raises(TooManyPixels):
        check_pixels(101, 100, 10_000)


def test_malloc_arenas_are_limited_on_glibc():
    assert limit_malloc_arenas(2) is True
