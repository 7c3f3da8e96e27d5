"""The Gradio page as a user meets it: served on loopback, called with gradio_client, in Chromium.

A tiny random-weight pose model and a random-weight YOLO (conf 0, at most 3 boxes) make the
pipeline find some "people"; their keypoints are arbitrary, so the tests check structure, counts,
bounds and that what the JSON says is what was drawn, never positions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

# gradio is optional (the `ui` extra); without it this module is skipped, not an error.
pytest.importorskip("gradio")
from PIL import Image
from ui_server import free_port, tiny_options

from realtime.io.frames import Frame
from realtime.stream.assemble import PipelineSpec, build_pipeline
from realtime.stream.serving import PipelineCache, ServerBusy
from realtime.stream.state import StreamState
from realtime.ui.media import FileSweeper, plain_reason
from realtime.ui.page import (
    DEFAULT_PORT,
    TAB_TITLES,
    TITLE,
    PoseApp,
    UiConfig,
    build_ui,
    resolve_port,
    serve,
)
from realtime.ui.settings import Controls

gradio_client = pytest.importorskip("gradio_client")
from ultralytics.utils import ASSETS  # noqa: E402  (after realtime.ui.page set the offline switches)

BUS = ASSETS / "bus.jpg"
WINDOW = (1280, 900)


@pytest.fixture(scope="module")
def options(tmp_path_factory) -> PipelineSpec:
    return tiny_options(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def pipeline(options):
    return build_pipeline(options)


@pytest.fixture(scope="module")
def url(pipeline, options, tmp_path_factory):
    empty_weights = tmp_path_factory.mktemp("no-weights")
    demo = build_ui(pipeline, options, UiConfig(max_upload_mb=5, weights_dir=empty_weights))
    local = serve(demo, port=free_port(), block=False)
    assert local.startswith("http://127.0.0.1:")
    yield local
    demo.close()


@pytest.fixture(scope="module")
def client(url):
    return gradio_client.Client(url, verbose=False, download_files=True)


def test_image_endpoint_returns_poses_and_draws_them(client):
    bus = np.asarray(Image.open(BUS).convert("RGB"))
    height, width = bus.shape[:2]

    image_path, record = client.predict(
        gradio_client.handle_file(str(BUS)), api_name="/predict_image"
    )

    assert record["frame"] == 0 and record["pts"] == 0.0
    poses = record["poses"]
    assert 1 <= len(poses) <= 3
    drawn_joints = []
    for pose in poses:
        assert pose["track_id"] == -1  # a still image is not tracked
        x1, y1, x2, y2 = pose["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        keypoints = np.array(pose["keypoints"])
        assert keypoints.shape == (17, 3) and np.isfinite(keypoints).all()
        assert ((keypoints[:, 2] >= 0) & (keypoints[:, 2] <= 1.5)).all()
        # Keypoints come from the person's padded crop region, in image pixels.
        w, h = x2 - x1, y2 - y1
        assert (keypoints[:, 0] > x1 - w).all() and (keypoints[:, 0] < x2 + w).all()
        assert (keypoints[:, 1] > y1 - h).all() and (keypoints[:, 1] < y2 + h).all()
        inside = (
            (keypoints[:, 2] > 0.3)
            & (keypoints[:, 0] >= 0) & (keypoints[:, 0] <= width - 1)
            & (keypoints[:, 1] >= 0) & (keypoints[:, 1] <= height - 1)
        )  # fmt: skip
        drawn_joints += keypoints[inside, :2].round().astype(int).tolist()

    rendered = np.asarray(Image.open(image_path).convert("RGB"))  # png: lossless
    assert rendered.shape == bus.shape
    changed = np.abs(rendered.astype(int) - bus).max(axis=2) > 0
    # Drawings on an untouched photo: most pixels are exactly the input, some are not.
    assert 0.001 < changed.mean() < 0.5
    # A joint above the threshold has a filled circle drawn on it.
    assert len(drawn_joints) >= 3
    hits = [changed[y, x] for x, y in drawn_joints]
    assert np.mean(hits) >= 0.9, hits


def test_image_endpoint_without_an_image_is_a_clear_error(client):
    with pytest.raises(gradio_client.exceptions.AppError, match="Upload an image first"):
        client.predict(None, api_name="/predict_image")


def write_clip(path: Path, frames: int, size: tuple[int, int] = (160, 128)) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_endpoint_returns_rendered_video_and_jsonl(client, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=4)

    video, jsonl, summary = client.predict(
        gradio_client.handle_file(str(clip)), api_name="/process_video"
    )

    video_path = Path(video["video"] if isinstance(video, dict) else video)
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (160, 128)
        assert sum(1 for _ in container.decode(stream)) == 4
    lines = Path(jsonl).read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2, 3]
    assert all(1 <= len(json.loads(line)["poses"]) <= 3 for line in lines)
    assert summary.startswith("4 frames in ")


def test_video_endpoint_reports_a_bad_file(client, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(gradio_client.exceptions.AppError, match="Could not process corrupt.mp4"):
        client.predict(gradio_client.handle_file(str(corrupt)), api_name="/process_video")


def test_page_config_names_the_tabs_and_the_models(url):
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        config = json.load(response)
    assert config["title"] == TITLE
    tabs = [c["props"]["label"] for c in config["components"] if c["type"] == "tabitem"]
    assert tabs == list(TAB_TITLES)
    markdown = " ".join(
        str(c["props"].get("value")) for c in config["components"] if c["type"] == "markdown"
    )
    assert "tiny.safetensors" in markdown and "yolo11n.yaml" in markdown
    endpoints = {d.get("api_name") for d in config["dependencies"]}
    assert {"predict_image", "process_video"} <= endpoints
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200 and "<html" in response.read().decode()


def test_chromium_shows_the_page(url, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/setup installs it when run as root)")
    shot = tmp_path / "ui.png"
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={shot}", "--virtual-time-budget=15000", url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape == (WINDOW[1], WINDOW[0], 3)
    # Not a blank or error page: text, panels and the orange tab marker give contrast and colours.
    assert image.std() > 20
    colours = np.unique(image.reshape(-1, 3) // 16, axis=0)
    assert len(colours) > 30
    orange = (
        (image[..., 0] > 200) & (image[..., 1] > 80) & (image[..., 1] < 160) & (image[..., 2] < 80)
    )
    assert orange.sum() > 50  # the selected tab's underline and the flip-test checkbox


def test_port_rule_flag_then_environment_then_7860():
    assert resolve_port(8123, {"GRADIO_SERVER_PORT": "9000"}) == 8123
    assert resolve_port(None, {"GRADIO_SERVER_PORT": "9000"}) == 9000
    assert resolve_port(None, {"GRADIO_SERVER_PORT": " "}) == DEFAULT_PORT == 7860
    assert resolve_port(None, {}) == 7860
    with pytest.raises(ValueError, match="GRADIO_SERVER_PORT='web' is not a port number"):
        resolve_port(None, {"GRADIO_SERVER_PORT": "web"})
    with pytest.raises(ValueError, match="1..65535"):
        resolve_port(70000, {})


def make_app(pipeline, options, tmp_path, **config) -> PoseApp:
    engines = PipelineCache(pipeline, options.pose, capacity=config.pop("engines", 3))
    defaults = Controls(Path(options.pose).resolve(), 1, True, "parabola", "softnms")
    return PoseApp(engines, defaults, UiConfig(weights_dir=tmp_path, **config), tmp_path)


def test_settings_belong_to_one_session(pipeline, options, tmp_path):
    app = make_app(pipeline, options, tmp_path)
    pose = str(Path(options.pose).resolve())
    first, text, *shown = app.restore(None)
    second, *_ = app.restore({"det_every": 4, "decoder": "dark", "flip_test": "yes", "pose": "/x"})
    assert shown == [pose, 1, True, "parabola", "softnms"] and "tiny.safetensors" in text
    # What a browser saved comes back; a value that is not on offer keeps the default.
    assert second.controls.values() == (pose, 4, True, "dark", "softnms")
    assert first.id != second.id

    session, saved, text, shown_pose = app.apply_settings(pose, 7, False, "argmax", "none", first)
    assert session is first and first.controls.values() == (pose, 7, False, "argmax", "none")
    assert saved == {"pose": pose, "det_every": 7, "flip_test": False, "decoder": "argmax",
                     "temporal": "none"}  # fmt: skip
    assert "every 7 frames" in text and "argmax decoder" in text and shown_pose == pose
    assert second.controls.values() == (pose, 4, True, "dark", "softnms")  # untouched
    # A checkpoint that is not in the list is never loaded, whoever sends it.
    app.apply_settings(str(tmp_path / "missing.safetensors"), 5, True, "dark", "none", first)
    assert first.controls.values() == (pose, 5, True, "dark", "none")
    app.close()


def test_a_pose_model_that_does_not_load_is_refused_and_the_list_goes_back(
    pipeline, options, tmp_path
):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    app = make_app(pipeline, options, tmp_path)
    assert str(broken) in [value for _, value in app.choices]
    session = app.new_session()
    with pytest.warns(UserWarning, match="Pose model not loaded"):
        _, saved, text, shown = app.apply_settings(str(broken), 2, True, "dark", "none", session)
    pose = str(Path(options.pose).resolve())
    assert shown == saved["pose"] == pose and "tiny.safetensors" in text
    assert session.controls.values() == (pose, 2, True, "dark", "none")
    assert str(tmp_path) not in str(text)
    app.close()


def test_engines_are_cached_per_setting_and_share_the_network(pipeline, options, tmp_path):
    engines = PipelineCache(pipeline, options.pose, capacity=2)
    network = pipeline.estimator.model
    dark = engines.get(engines.key(options.pose, True, "dark"))
    assert dark.estimator.model is network and dark.detector is pipeline.detector
    assert dark.estimator.config.decoder == "dark" and dark.estimator.config.flip_test
    assert engines.get(engines.key(options.pose, True, "dark")) is dark
    argmax = engines.get(engines.key(options.pose, False, "argmax"))
    assert [k.config.decoder for k, _ in engines.items()] == ["dark", "argmax"]  # LRU of 2
    assert argmax.estimator.model is network
    with pytest.raises((OSError, ValueError)):
        engines.get(engines.key(tmp_path / "missing.safetensors", True, "dark"))


def test_webcam_frames_keep_one_session_and_show_fps(pipeline, options, tmp_path):
    app = make_app(pipeline, options, tmp_path)
    session = app.new_session()
    frame = np.asarray(Image.open(BUS).convert("RGB").resize((180, 240)))

    first, session = app.webcam_frame(frame, session)
    stream = session.stream
    second, same = app.webcam_frame(frame, session)

    assert same is session and session.frames == 2 and session.interval_s > 0
    assert session.stream is stream and stream.frames == 2
    assert first.shape == second.shape == frame.shape and first.dtype == np.uint8
    assert not np.array_equal(first, frame)  # at least the latency overlay is drawn
    pose = str(Path(options.pose).resolve())
    app.apply_settings(pose, 2, True, "parabola", "softnms", session)
    app.webcam_frame(frame, session)
    assert session.stream is not stream and session.frames == 1  # new settings, new stream
    assert session.stream.det_every == 2
    assert app.webcam_frame(None, session) == (None, session)
    app.close()


def test_serving_batches_every_sessions_newest_frame(pipeline, options, tmp_path):
    app = make_app(pipeline, options, tmp_path, max_streams=2)
    worker, key = app.worker, app.engines.base
    image = np.asarray(Image.open(BUS).convert("RGB").resize((160, 120)))
    release = threading.Event()
    blocker = threading.Thread(target=worker.call, args=(release.wait,))
    blocker.start()  # holds the worker, so the frames below meet in one round
    while worker._jobs:  # until the worker has taken the blocking job
        time.sleep(0.01)
    answers: dict[str, object] = {}

    def send(name: str, stream: int, state: StreamState, index: int) -> None:
        answers[name] = worker.frame(stream, key, state, Frame(index, 0.0, image, 0.0))

    states = [StreamState(), StreamState()]
    threads = [threading.Thread(target=send, args=("a0", 1, states[0], 0))]
    threads[0].start()
    while 1 not in worker._frames:
        time.sleep(0.01)
    threads += [threading.Thread(target=send, args=(n, s, states[s - 1], i))
                for n, s, i in (("a1", 1, 1), ("b0", 2, 0))]  # fmt: skip
    for thread in threads[1:]:
        thread.start()
    while len(worker._frames) < 2 or "a0" not in answers:
        time.sleep(0.01)
    assert answers["a0"] is None  # replaced by the same session's newer frame
    with pytest.raises(ServerBusy, match="already showing 2 webcams"):
        worker.frame(3, key, StreamState(), Frame(0, 0.0, image, 0.0))
    release.set()
    for thread in [blocker, *threads]:
        thread.join(60)
    assert answers["a1"].frame.index == 1 and answers["b0"].frame.index == 0
    assert answers["a1"].batch == answers["b0"].batch == 2  # one batch for both sessions
    assert worker.stats.largest_batch == 2 and worker.stats.dropped == 1
    assert states[0].frames == states[1].frames == 1
    app.close()


def test_image_endpoint_refuses_urls_and_non_images(client, tmp_path):
    url = {"path": "https://example.com/bus.jpg", "url": "https://example.com/bus.jpg",
           "meta": {"_type": "gradio.FileData"}}  # fmt: skip
    with pytest.raises(gradio_client.exceptions.AppError, match="never a URL"):
        client.predict(url, api_name="/predict_image")
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(gradio_client.exceptions.AppError, match="not an image this page") as err:
        client.predict(gradio_client.handle_file(str(text)), api_name="/predict_image")
    assert "pi_heif" not in str(err.value) and "/" not in str(err.value)


def test_video_errors_name_no_server_paths(client, tmp_path):
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(2).integers(0, 256, 5_000, dtype=np.uint8).tobytes())
    with pytest.raises(gradio_client.exceptions.AppError, match="Could not process noise.mp4") as e:
        client.predict(gradio_client.handle_file(str(noise)), api_name="/process_video")
    message = str(e.value)
    assert "/tmp" not in message and "Errno" not in message and tempfile.gettempdir() not in message


def test_errors_read_without_server_paths_and_old_files_go(tmp_path):
    err = OSError(2, "No such file or directory", "/tmp/gradio/4f2a/clip.mp4")
    assert plain_reason(err) == "No such file or directory: 'clip.mp4'"
    assert plain_reason("decoding failed at /srv/x/y.mp4 and/or 3 frames/s") == (
        "decoding failed at y.mp4 and/or 3 frames/s"
    )
    old, new = tmp_path / "old", tmp_path / "new.mp4"
    old.mkdir()
    (old / "a.jsonl").write_text("{}\n")
    new.write_bytes(b"x")
    os.utime(old, (time.time() - 120, time.time() - 120))
    sweeper = FileSweeper(tmp_path, age_s=60, every_s=3600)
    assert sweeper.sweep() == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["new.mp4"]
    sweeper.close()


def test_a_webcam_beyond_the_limit_is_told_in_words(pipeline, options, tmp_path):
    import gradio as gr  # here: realtime.ui.page set the offline switches before gradio loads

    app = make_app(pipeline, options, tmp_path, max_streams=1)
    frame = np.asarray(Image.open(BUS).convert("RGB").resize((160, 120)))
    first, second = app.new_session(), app.new_session()
    image, _ = app.webcam_frame(frame, first)
    assert image.shape == frame.shape
    with pytest.raises(gr.Error, match="already showing 1 webcam, its most; press Record again"):
        app.webcam_frame(frame, second)
    app.end_session(first)  # the first visitor closed the tab: the place is free at once
    image, _ = app.webcam_frame(frame, second)
    assert image.shape == frame.shape
    app.close()
