"""The browser demo: live webcam, video upload and single images, served by Gradio on 127.0.0.1.

    python app.py ui [--port N]          # then open http://127.0.0.1:7860/

`launch(options, ...)` builds the pipeline once and serves `build_ui(pipeline, options)`. The page
has three tabs ("Webcam", "Video", "Image") and one settings panel above them.

Sharing: the person detector and the pose engine are loaded once and shared by every visitor and
every tab. Each use (a webcam session, one uploaded video, one image) runs its own `PosePipeline`
around them, so its detection interval and tracker history are its own and two streams never mix
their frames in one tracker; a lock lets one frame at a time through the shared models. The
settings are global: changing one rebuilds only the part it lives in (the pose engine for the
model, flip test and decoder; a config for the detection interval and temporal fusion) and new
frames pick it up.

`GET /config` lists the tabs; the image tab's event is callable with `gradio_client` as
`/predict_image` (image in; rendered image and the poses as a `FramePoses.to_dict()` record out).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realtime.offline import configure_offline

configure_offline()  # before gradio is imported: no analytics, no version check

import gradio as gr  # noqa: E402

from ccm.checkpoint import PoseConfig, load_checkpoint  # noqa: E402
from ccm.refine import DECODE_METHODS  # noqa: E402
from realtime.assemble import (  # noqa: E402
    WEIGHTS_DIR,
    PipelineOptions,
    build_pipeline,
    default_pose_checkpoint,
)
from realtime.batch import process_video  # noqa: E402
from realtime.engine import EngineConfig, PoseEstimator  # noqa: E402
from realtime.pipeline import FrameResult, PipelineConfig, PosePipeline  # noqa: E402
from realtime.render import RenderConfig, render_frame  # noqa: E402
from realtime.sources import Frame  # noqa: E402
from realtime.temporal import METHODS as TEMPORAL_METHODS  # noqa: E402
from realtime.temporal import TemporalConfig, TemporalFusion  # noqa: E402

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 7860
PORT_ENV = "GRADIO_SERVER_PORT"
TAB_TITLES = ("Webcam", "Video", "Image")
TITLE = "ccm-pose: multi-person pose estimation"
# System fonts only: the default theme would fetch its font from Google at page load.
_THEME_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
_THEME_MONO = ("ui-monospace", "monospace")


@dataclass(frozen=True)
class UiConfig:
    """How the page behaves.

    Attributes:
        stream_every_s: the browser sends a webcam frame this often (seconds).
        stream_time_limit_s: a webcam stream ends after this many seconds (press record again).
        new_stream_gap_s: a webcam pause longer than this starts a fresh track history.
        fps_smoothing: weight of the newest frame interval in the shown FPS (an EMA).
        max_upload_mb: largest file accepted.
        queue_size: events that may wait for a worker; more are refused with "queue full".
        weights_dir: pose checkpoints (*.safetensors) offered in the model list.
        render: how skeletons, track ids and the FPS/latency overlay are drawn.
    """

    stream_every_s: float = 0.1
    stream_time_limit_s: int = 600
    new_stream_gap_s: float = 2.0
    fps_smoothing: float = 0.2
    max_upload_mb: int = 500
    queue_size: int = 16
    weights_dir: Path = WEIGHTS_DIR
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        if not self.stream_every_s > 0 or self.stream_time_limit_s < 1:
            raise ValueError(
                f"need stream_every_s > 0 and stream_time_limit_s >= 1, got "
                f"{self.stream_every_s}, {self.stream_time_limit_s}"
            )
        if not 0 < self.fps_smoothing <= 1:
            raise ValueError(f"fps_smoothing must be in (0, 1], got {self.fps_smoothing}")
        if self.max_upload_mb < 1 or self.queue_size < 1:
            raise ValueError(
                f"need max_upload_mb >= 1 and queue_size >= 1, got "
                f"{self.max_upload_mb}, {self.queue_size}"
            )


def resolve_port(port: int | None, environ: Mapping[str, str] = os.environ) -> int:
    """`port` if given, else `$GRADIO_SERVER_PORT`, else 7860."""
    if port is None:
        text = environ.get(PORT_ENV, "").strip()
        if not text:
            return DEFAULT_PORT
        try:
            port = int(text)
        except ValueError:
            raise ValueError(f"{PORT_ENV}={text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return port


def pose_choices(weights_dir: Path, current: Path) -> list[tuple[str, str]]:
    """(label, path) for every pose checkpoint in `weights_dir`, plus `current` if elsewhere."""
    paths = sorted(p.resolve() for p in weights_dir.glob("*.safetensors"))
    if current.resolve() not in paths:
        paths.insert(0, current.resolve())
    names = [p.name for p in paths]
    return [(p.name if names.count(p.name) == 1 else str(p), str(p)) for p in paths]


@dataclass(frozen=True)
class Controls:
    """The settings on the page."""

    pose: Path
    det_every: int
    flip_test: bool
    decoder: str
    temporal: str


@dataclass(frozen=True)
class _Loaded:
    """What every new pipeline is built from; replaced whole, so a reader never sees a mix."""

    pose_path: Path
    engine: PoseEstimator
    pipeline: PipelineConfig
    temporal: TemporalConfig
    version: int


class _LockedPipeline:
    """A pipeline whose frames pass one at a time through models shared with other pipelines."""

    def __init__(self, lock: threading.Lock, pipeline: PosePipeline) -> None:
        self._lock = lock
        self.pipeline = pipeline

    def __call__(self, frame: Frame) -> FrameResult:
        with self._lock:
            return self.pipeline(frame)

    def reset(self) -> None:
        self.pipeline.reset()

    def stream(self, frames):
        for frame in frames:
            yield self(frame)


class SharedModels:
    """The loaded detector and pose engine behind the page, and the settings on top of them."""

    def __init__(self, pipeline: PosePipeline, pose_path: Path) -> None:
        self.detector = pipeline.detector
        self.frame_lock = threading.Lock()  # one frame at a time through detector and engine
        self._configure_lock = threading.Lock()  # one settings change at a time
        self.loaded = _Loaded(
            pose_path, pipeline.estimator, pipeline.config, _temporal_config(pipeline), version=0
        )

    @property
    def version(self) -> int:
        return self.loaded.version

    def controls(self) -> Controls:
        s = self.loaded
        return Controls(
            s.pose_path, s.pipeline.det_every, s.engine.config.flip_test,
            s.engine.config.decoder, s.temporal.method,
        )  # fmt: skip

    def new_pipeline(self, track: bool = True) -> PosePipeline:
        """A pipeline with its own detection interval and tracker around the shared models.

        `track` False leaves temporal fusion out (a single image has no time): track ids are -1.
        """
        s = self.loaded
        temporal = TemporalFusion(s.temporal) if track and s.temporal.method != "none" else None
        pipeline = PosePipeline(self.detector, s.engine, temporal, s.pipeline)
        return _LockedPipeline(self.frame_lock, pipeline)

    def configure(self, controls: Controls) -> None:
        """Apply new settings, rebuilding only what they change; raises ValueError/OSError."""
        with self._configure_lock:
            s = self.loaded
            pipeline = dataclasses.replace(s.pipeline, det_every=int(controls.det_every))
            temporal = dataclasses.replace(s.temporal, method=controls.temporal)
            engine_config = dataclasses.replace(
                s.engine.config, flip_test=controls.flip_test, decoder=controls.decoder
            )
            engine = s.engine
            if controls.pose.resolve() != s.pose_path.resolve():
                model, pose = load_checkpoint(controls.pose)
                logger.info("pose model: %s (%s, input %s)", controls.pose, pose.arch,
                            pose.input_size)  # fmt: skip
                engine = PoseEstimator(model, pose, engine_config)
            elif engine_config != s.engine.config:
                engine = self._reconfigured_engine(s, engine_config)
            if (engine, pipeline, temporal) == (s.engine, s.pipeline, s.temporal):
                return
            self.loaded = _Loaded(controls.pose, engine, pipeline, temporal, s.version + 1)
            logger.info("settings: %s", controls)

    @staticmethod
    def _reconfigured_engine(s: _Loaded, config: EngineConfig) -> PoseEstimator:
        """The same network with other refinement settings; the estimator keeps the plain one."""
        return PoseEstimator(s.engine.model, s.engine.pose, config)

    def describe(self) -> str:
        """Markdown naming the loaded models."""
        s = self.loaded
        pose: PoseConfig = s.engine.pose
        h, w = pose.input_size
        ap = pose.metrics.get("AP")
        score = f", AP {ap:.3f}" if isinstance(ap, float) else ""
        detector = getattr(getattr(self.detector, "config", None), "weights", "custom")
        c = s.engine.config
        return (
            f"**Pose model:** `{s.pose_path.name}` ({pose.arch}, input {h}x{w}{score})  \n"
            f"**Person detector:** `{Path(str(detector)).name}`  \n"
            f"**Device:** {c.device} ({c.backend}{', fp16' if c.half else ''})"
        )


def _temporal_config(pipeline: PosePipeline) -> TemporalConfig:
    config = getattr(pipeline.temporal, "config", None)
    return config if isinstance(config, TemporalConfig) else TemporalConfig(method="none")


@dataclass
class _WebcamSession:
    """One browser's webcam stream: its own pipeline, frame clock and FPS estimate."""

    pipeline: PosePipeline
    version: int
    started: float
    last: float
    frames: int = 0
    interval_s: float | None = None


class PoseApp:
    """The event handlers behind the page (plain methods, so they can be called without it)."""

    def __init__(self, models: SharedModels, config: UiConfig, jobs_dir: Path) -> None:
        self.models = models
        self.config = config
        self.jobs_dir = jobs_dir
        self.render = functools.partial(render_frame, config=config.render)

    def webcam_frame(
        self, image: np.ndarray | None, session: _WebcamSession | None
    ) -> tuple[np.ndarray | None, _WebcamSession | None]:
        """One webcam frame (H, W, 3) uint8 RGB -> the same frame with poses and FPS/latency."""
        if image is None:
            return None, session
        now = time.monotonic()
        if (
            session is None
            or session.version != self.models.version
            or now - session.last > self.config.new_stream_gap_s
        ):
            pipeline = self.models.new_pipeline()
            session = _WebcamSession(pipeline, self.models.version, started=now, last=now)
        frame = Frame(session.frames, now - session.started, _rgb(image), now)
        result = session.pipeline(frame)
        done = time.monotonic()
        if session.frames > 0:  # FPS from the time between processed frames, smoothed
            interval, a = done - session.last, self.config.fps_smoothing
            previous = session.interval_s
            session.interval_s = interval if previous is None else a * interval + (1 - a) * previous
        session.last = done
        session.frames += 1
        fps = 1.0 / max(session.interval_s, 1e-6) if session.interval_s else None
        return self.render(frame.image, result.poses, fps, result.latency_ms), session

    def process_upload(
        self,
        video: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way)
    ) -> tuple[str, str, str]:
        """An uploaded video file -> (rendered mp4 path, JSON Lines path, a one-line summary)."""
        if not video:
            raise gr.Error("Upload a video file first.")
        source = Path(video)
        out_dir = Path(tempfile.mkdtemp(dir=self.jobs_dir))

        def report_progress(done: int, total: int | None) -> None:
            progress((done, total), desc="Estimating poses", unit="frames")

        progress(0.0, desc="Opening the video")
        report = process_video(
            source, out_dir, self.models.new_pipeline(), self.render, report_progress
        )
        if report.error is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise gr.Error(f"Could not process {source.name}: {report.error}")
        if report.frames == 0:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise gr.Error(f"{source.name} holds no video frames.")
        summary = f"{report.frames} frames in {report.seconds:.1f} s ({report.fps:.1f} frames/s)"
        return str(report.video), str(report.jsonl), summary

    def predict_image(self, image: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
        """One image (H, W, 3) uint8 RGB -> (rendered image, poses as `FramePoses.to_dict()`).

        Keypoints and boxes are in the image's pixels; a still image is not tracked, so every
        `track_id` is -1.
        """
        if image is None:
            raise gr.Error("Upload an image first.")
        frame = Frame(0, 0.0, _rgb(image), time.monotonic())
        result = self.models.new_pipeline(track=False)(frame)
        rendered = self.render(frame.image, result.poses, None, result.latency_ms)
        return rendered, result.poses.to_dict()

    def apply_settings(
        self, pose: str, det_every: float, flip_test: bool, decoder: str, temporal: str
    ) -> tuple[Any, ...]:
        """The settings panel -> (models text, the settings in effect, one per control)."""
        wanted = Controls(Path(pose), int(det_every), bool(flip_test), decoder, temporal)
        try:
            self.models.configure(wanted)
        except (ValueError, OSError, RuntimeError) as err:
            logger.warning("settings %s refused: %s", wanted, err)
            gr.Warning(f"Settings not applied: {err}")
        c = self.models.controls()
        return (self.models.describe(), str(c.pose.resolve()), c.det_every, c.flip_test,
                c.decoder, c.temporal)  # fmt: skip


def _rgb(image: np.ndarray) -> np.ndarray:
    """A (H, W, 3) uint8 C-contiguous RGB array from what the image component delivers."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise gr.Error(f"expected an RGB image, got shape {image.shape} {image.dtype}")
    image = np.ascontiguousarray(image[..., :3])
    return image if image.flags.writeable else image.copy()  # torch.from_numpy wants writeable


_INTRO = """# ccm-pose: multi-person pose estimation
Finds every person in the picture and draws their skeleton (17 COCO keypoints). A person
detector (YOLO) finds people, a Cascaded Context Mixer network places the joints, and the
joints of each person are tracked and smoothed across frames (the number on each skeleton is
its track id). Everything runs on this computer."""

_HELP_SETTINGS = (
    "These settings apply to every tab and everyone using this page. Detecting every N frames "
    "is faster (poses give the boxes in between); the flip test is slower but more accurate."
)


def build_ui(
    pipeline: PosePipeline, options: PipelineOptions, config: UiConfig = UiConfig()
) -> gr.Blocks:
    """The page around `pipeline` (built by `build_pipeline(options)`); queue set, not launched."""
    pose_path = Path(options.pose or default_pose_checkpoint(config.weights_dir))
    models = SharedModels(pipeline, pose_path)
    jobs_dir = Path(tempfile.mkdtemp(prefix="ccm-pose-ui-"))
    app = PoseApp(models, config, jobs_dir)
    c = models.controls()

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(_INTRO)
        with gr.Accordion("Models and settings", open=True):
            loaded = gr.Markdown(models.describe())
            with gr.Row():
                pose = gr.Dropdown(
                    pose_choices(config.weights_dir, pose_path), value=str(pose_path.resolve()),
                    label="Pose model", info="checkpoints in weights/",
                )  # fmt: skip
                det_every = gr.Slider(1, 30, value=c.det_every, step=1,
                                      label="Detect people every N frames")  # fmt: skip
                flip = gr.Checkbox(value=c.flip_test, label="Flip test",
                                   info="average with the mirrored image")  # fmt: skip
                decoder = gr.Dropdown(list(DECODE_METHODS), value=c.decoder,
                                      label="Sub-pixel decoder")  # fmt: skip
                temporal = gr.Dropdown(list(TEMPORAL_METHODS), value=c.temporal,
                                       label="Smoothing across frames")  # fmt: skip
            gr.Markdown(_HELP_SETTINGS)
        controls = [pose, det_every, flip, decoder, temporal]
        gr.on(
            [pose.input, det_every.release, flip.input, decoder.input, temporal.input],
            app.apply_settings, controls, [loaded, *controls], api_visibility="undocumented",
        )  # fmt: skip

        with gr.Tabs():
            with gr.Tab(TAB_TITLES[0]):
                gr.Markdown(
                    "Allow the browser to use your camera and press record. The right side shows "
                    "the skeletons, track ids, frames per second and the delay of each frame."
                )
                with gr.Row():
                    camera = gr.Image(sources=["webcam"], streaming=True, type="numpy",
                                      label="Camera")  # fmt: skip
                    live = gr.Image(label="Poses", format="jpeg", interactive=False)
                session = gr.State(None)
                camera.stream(
                    app.webcam_frame, [camera, session], [live, session],
                    stream_every=config.stream_every_s, time_limit=config.stream_time_limit_s,
                    concurrency_limit=1, show_progress="hidden", api_visibility="private",
                )  # fmt: skip

            with gr.Tab(TAB_TITLES[1]):
                gr.Markdown(
                    f"Upload a video (up to {config.max_upload_mb} MB). Every frame is processed; "
                    "you get the video with skeletons drawn (H.264 mp4) and the poses of every "
                    "frame as JSON Lines (one line per frame, image pixels)."
                )
                with gr.Row():
                    with gr.Column():
                        upload = gr.Video(sources=["upload"], label="Video file")
                        run_video = gr.Button("Process video", variant="primary")
                    with gr.Column():
                        rendered_video = gr.Video(label="Video with poses", interactive=False)
                        jsonl = gr.File(label="Poses (JSON Lines)", interactive=False)
                        summary = gr.Markdown()
                run_video.click(
                    app.process_upload, upload, [rendered_video, jsonl, summary],
                    api_name="process_video", concurrency_limit=1,
                )  # fmt: skip

            with gr.Tab(TAB_TITLES[2]):
                gr.Markdown(
                    "Upload a photo. You get it back with skeletons drawn, and the poses as JSON: "
                    "a box, a score and 17 keypoints [x, y, score] per person, in image pixels."
                )
                with gr.Row():
                    with gr.Column():
                        photo = gr.Image(sources=["upload", "clipboard"], type="numpy",
                                         label="Image")  # fmt: skip
                        run_image = gr.Button("Find poses", variant="primary")
                    with gr.Column():
                        rendered_image = gr.Image(label="Image with poses", format="png",
                                                  interactive=False)  # fmt: skip
                        poses_json = gr.JSON(label="Poses")
                run_image.click(
                    app.predict_image, photo, [rendered_image, poses_json],
                    api_name="predict_image", concurrency_limit=2,
                )  # fmt: skip

    # Two workers: a long video upload does not hold up images; the frame lock orders the models.
    demo.queue(max_size=config.queue_size, default_concurrency_limit=2)
    weakref.finalize(demo, shutil.rmtree, jobs_dir, ignore_errors=True)
    return demo


def serve(
    demo: gr.Blocks,
    port: int | None = None,
    share: bool = False,
    max_upload_mb: int = 500,
    block: bool = True,
) -> str:
    """Serve `demo` on 127.0.0.1 (port: `resolve_port`); returns the local URL.

    `block` False returns at once with the server running on a thread (`demo.close()` stops it).
    """
    _, url, share_url = demo.launch(
        server_name=HOST, server_port=resolve_port(port), share=share,
        max_file_size=f"{max_upload_mb}mb", prevent_thread_lock=not block, show_error=True,
        quiet=not block, ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False,
        footer_links=["api", "settings"],
        theme=gr.themes.Default(font=_THEME_FONTS, font_mono=_THEME_MONO),
    )  # fmt: skip
    if share_url:
        logger.info("public share link: %s", share_url)
    return url


def launch(
    options: PipelineOptions, port: int | None = None, share: bool = False, max_upload_mb: int = 500
) -> None:
    """Build the pipeline once and serve the page until interrupted."""
    resolve_port(port)  # a bad port fails before the models load
    pipeline = build_pipeline(options)
    demo = build_ui(pipeline, options, UiConfig(max_upload_mb=max_upload_mb))
    serve(demo, port, share, max_upload_mb, block=True)
