"""The Gradio page as a user meets it: served on loopback, called with gradio_client, in Chromium.

A tiny random-weight pose model and a random-weight YOLO (conf 0, at most 3 boxes) make the
pipeline find some "people"; their keypoints are arbitrary, so the tests check structure, counts,
bounds and that what the JSON says is what was drawn, never positions.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ccm.checkpoint import PoseConfig, save_checkpoint
from realtime.assemble import PipelineOptions, build_pipeline
from realtime.detector import DetectorConfig
from realtime.pipeline import PipelineConfig
from realtime.ui import (
    DEFAULT_PORT,
    TAB_TITLES,
    TITLE,
    Controls,
    PoseApp,
    SharedModels,
    UiConfig,
    build_ui,
    resolve_port,
    serve,
)

gradio_client = pytest.importorskip("gradio_client")
from ultralytics.utils import ASSETS  # noqa: E402  (after realtime.ui set the offline switches)

BUS = ASSETS / "bus.jpg"
WINDOW = (1280, 900)


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    config = PoseConfig("ccm_mobilenetv2", input_size=(128, 96))
    model = config.build_model()
    # Fresh weights give heatmaps of ~1e-16 (activations vanish through BatchNorm's unit running
    # variance): calibrate BatchNorm on one random batch and scale the prediction layer, so the
    # heatmaps peak around 0.5-1 and some keypoints pass the renderer's 0.3 threshold.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        model.train()(torch.randn(4, 3, *config.input_size))
        model.head.final_layer.weight.mul_(8.0)
    model.eval()
    return save_checkpoint(path, model, config)


@pytest.fixture(scope="module")
def options(tmp_path_factory) -> PipelineOptions:
    pose = tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.safetensors")
    return PipelineOptions(
        pose=pose,
        detector=Path("yolo11n.yaml"),
        device="cpu",
        detection=DetectorConfig(conf=0.0, max_det=3, imgsz=320),
        pipeline=PipelineConfig(min_pose_score=0.0),
    )


@pytest.fixture(scope="module")
def pipeline(options):
    return build_pipeline(options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(pipeline, options, tmp_path_factory):
    empty_weights = tmp_path_factory.mktemp("no-weights")
    demo = build_ui(pipeline, options, UiConfig(max_upload_mb=5, weights_dir=empty_weights))
    local = serve(demo, port=free_port(), max_upload_mb=5, block=False)
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


def test_settings_rebuild_only_what_they_change(pipeline, options, tmp_path):
    models = SharedModels(pipeline, options.pose)
    before = models.loaded
    network = before.engine.model

    models.configure(Controls(options.pose, det_every=3, flip_test=True, decoder="parabola",
                              temporal="softnms"))  # fmt: skip
    assert models.loaded.engine is before.engine  # a pipeline setting leaves the engine alone
    assert models.loaded.pipeline.det_every == 3 and models.version == 1

    models.configure(Controls(options.pose, 3, flip_test=False, decoder="dark", temporal="none"))
    engine = models.loaded.engine
    assert engine is not before.engine and engine.model is network  # no weights reload
    assert (engine.config.flip_test, engine.config.decoder) == (False, "dark")
    fresh = models.new_pipeline().pipeline
    assert fresh.temporal is None and fresh.config.det_every == 3 and fresh.estimator is engine
    assert fresh.detector is pipeline.detector

    app = PoseApp(models, UiConfig(), tmp_path)
    state = app.apply_settings(str(tmp_path / "missing.safetensors"), 5, True, "argmax", "none")
    assert state[1:] == (str(Path(options.pose).resolve()), 3, False, "dark", "none")
    assert models.version == 2  # the refused change left everything as it was


def test_webcam_frames_keep_one_session_and_show_fps(pipeline, options, tmp_path):
    models = SharedModels(pipeline, options.pose)
    app = PoseApp(models, UiConfig(), tmp_path)
    frame = np.asarray(Image.open(BUS).convert("RGB").resize((180, 240)))

    first, session = app.webcam_frame(frame, None)
    second, same = app.webcam_frame(frame, session)

    assert same is session and session.frames == 2 and session.interval_s > 0
    assert first.shape == second.shape == frame.shape and first.dtype == np.uint8
    assert not np.array_equal(first, frame)  # at least the latency overlay is drawn
    models.configure(Controls(options.pose, 2, True, "parabola", "softnms"))
    _, renewed = app.webcam_frame(frame, session)
    assert renewed is not session and renewed.frames == 1  # new settings, new pipeline
    assert app.webcam_frame(None, renewed) == (None, renewed)
