"""The browser demo: live webcam, video upload and single images, served by Gradio on 127.0.0.1.

    python app.py ui [--port N]          # then open http://127.0.0.1:7860/

`launch(options, ...)` builds the pipeline once and serves `build_ui(pipeline, options)`. The page
has three tabs ("Webcam", "Video", "Image") and one settings panel above them.

Shared between visitors: only the loaded models, the person detector and the pose engines in an
`EngineCache` (one per distinct checkpoint, precision, flip test and decoder, the least recently
used dropped beyond three), run by the one `ServingWorker` thread. Each browser session has its
own settings (kept in the browser, so a reload shows them again), its own webcam stream with its
own track history, FPS and latency, and its own uploads. Several webcams stream at once: every
round the worker takes each session's newest frame and runs them through the models together.

Nothing piles up: streamed frames go to the browser as in-memory JPEGs (never written to disk);
uploads, rendered images and videos are deleted `UiConfig.keep_files_s` after they were made.
Inputs come from uploads and the webcam only (a URL sent to the API is refused, never fetched),
and errors are said in words, without server paths.

`GET /config` lists the tabs; the image tab's event is callable with `gradio_client` as
`/predict_image` (image file in; rendered image and the poses as a `FramePoses.to_dict()`
record out), the video tab's as `/process_video`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import tempfile
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

from realtime.assemble import (  # noqa: E402
    WEIGHTS_DIR,
    PipelineOptions,
    build_pipeline,
    default_pose_checkpoint,
)
from realtime.batch import process_video  # noqa: E402
from realtime.pipeline import PosePipeline, StreamState  # noqa: E402
from realtime.render import RenderConfig, render_frame  # noqa: E402
from realtime.serving import EngineCache, ServedStream, ServerBusy, ServingWorker  # noqa: E402
from realtime.sources import Frame, read_image  # noqa: E402
from realtime.temporal import TemporalConfig, TemporalFusion  # noqa: E402
from realtime.ui_media import (  # noqa: E402
    FileSweeper,
    local_image,
    local_video,
    memory_image,
    plain_reason,
)
from realtime.ui_settings import Controls, describe, pose_choices  # noqa: E402

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 7860
PORT_ENV = "GRADIO_SERVER_PORT"
TAB_TITLES = ("Webcam", "Video", "Image")
TITLE = "ccm-pose: multi-person pose estimation"
SETTINGS_KEY = "ccm-pose-settings"
# System fonts only: the default theme would fetch its font from Google at page load.
_THEME_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
_THEME_MONO = ("ui-monospace", "monospace")
_NOT_AN_IMAGE = "That file is not an image this page can read (PNG, JPEG, WebP, BMP or TIFF)."


@dataclass(frozen=True)
class UiConfig:
    """How the page behaves.

    Attributes:
        stream_every_s: the browser sends a webcam frame this often (seconds).
        stream_time_limit_s: a webcam stream ends after this many seconds (press record again).
        new_stream_gap_s: a webcam pause longer than this starts a fresh track history.
        fps_smoothing: weight of the newest frame interval in the shown FPS (an EMA).
        max_upload_mb: largest file accepted.
        max_streams: webcams served at once; one more is told the page is full.
        batch_wait_s: how long the models wait for the other webcams' frames to batch them.
        engines: pose engines kept loaded (distinct model / flip test / decoder settings).
        keep_files_s: uploads and results are deleted this long after they were made.
        sweep_every_s: how often old files are looked for.
        queue_size: events that may wait for a worker; more are refused with "queue full".
        weights_dir: pose checkpoints (*.safetensors) offered in the model list.
        render: how skeletons, track ids and the FPS/latency overlay are drawn.
    """

    stream_every_s: float = 0.1
    stream_time_limit_s: int = 600
    new_stream_gap_s: float = 2.0
    fps_smoothing: float = 0.2
    max_upload_mb: int = 500
    max_streams: int = 4
    batch_wait_s: float = 0.02
    engines: int = 3
    keep_files_s: int = 1800
    sweep_every_s: int = 60
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
        counts = (self.max_upload_mb, self.queue_size, self.max_streams, self.engines,
                  self.keep_files_s, self.sweep_every_s)  # fmt: skip
        if min(counts) < 1:
            raise ValueError(
                "max_upload_mb, queue_size, max_streams, engines, keep_files_s and "
                f"sweep_every_s must be >= 1, got {counts}"
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


@dataclass
class Session:
    """One browser session: its settings, and its webcam stream's state, clock and FPS."""

    id: int
    controls: Controls
    stream: StreamState | None = None
    stream_from: tuple | None = None  # what `stream` was built from
    started: float = 0.0
    last: float = 0.0
    frames: int = 0
    interval_s: float | None = None


class PoseApp:
    """The event handlers behind the page (plain methods, so they can be called without it)."""

    def __init__(
        self,
        engines: EngineCache,
        defaults: Controls,
        config: UiConfig,
        jobs_dir: Path,
        temporal: TemporalConfig | None = None,
    ) -> None:
        self.engines = engines
        self.worker = ServingWorker(
            engines, config.max_streams, config.new_stream_gap_s, config.batch_wait_s
        )
        self.defaults = defaults
        self.config = config
        self.jobs_dir = jobs_dir
        self.temporal = temporal or TemporalConfig()
        self.choices = pose_choices(config.weights_dir, defaults.pose)
        self.render = functools.partial(render_frame, config=config.render)
        self._ids = iter(range(1, 1 << 62))

    def new_session(self, controls: Controls | None = None) -> Session:
        return Session(next(self._ids), controls or self.defaults)

    def end_session(self, session: Session | None) -> None:
        """Gradio calls this when a session's state is deleted (its tab closed)."""
        if isinstance(session, Session):
            self.worker.end_stream(session.id)

    def _key(self, c: Controls):
        return self.engines.key(c.pose, c.flip_test, c.decoder)

    def _stream_state(self, c: Controls, track: bool = True) -> StreamState:
        method = c.temporal if track else "none"
        temporal = None
        if method != "none":
            temporal = TemporalFusion(dataclasses.replace(self.temporal, method=method))
        return StreamState(c.det_every if track else 1, temporal)

    # -- settings ------------------------------------------------------------------------------

    def restore(self, saved: Any) -> tuple[Any, ...]:
        """Page load: the settings this browser saved (else the defaults) -> the session and
        the controls showing them."""
        controls = Controls.from_saved(saved, self.defaults, [v for _, v in self.choices])
        session = self.new_session(controls)
        return (session, describe(self.engines, controls), *controls.values())

    def apply_settings(
        self, pose: str, det_every: float, flip_test: bool, decoder: str, temporal: str,
        session: Session | None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """A control changed -> (session, settings to save in the browser, models text, pose).

        Only this session's settings change. A pose model that does not load is refused with a
        warning and the dropdown goes back to the one in use."""
        session = session if isinstance(session, Session) else self.new_session()
        saved = {"pose": pose, "det_every": det_every, "flip_test": flip_test,
                 "decoder": decoder, "temporal": temporal}  # fmt: skip
        wanted = Controls.from_saved(saved, session.controls, [v for _, v in self.choices])
        if wanted.pose != session.controls.pose:
            try:
                self.worker.call(lambda: self.engines.get(self._key(wanted)), timeout=600)
            except (ValueError, OSError, RuntimeError, TimeoutError) as err:
                logger.warning("pose model %s refused: %s", wanted.pose, err)
                gr.Warning(f"Pose model not loaded: {plain_reason(err)}")
                wanted = dataclasses.replace(wanted, pose=session.controls.pose)
        session.controls = wanted
        return (session, wanted.to_saved(), describe(self.engines, wanted), str(wanted.pose))

    # -- webcam --------------------------------------------------------------------------------

    def webcam_frame(self, image: np.ndarray | None, session: Session | None) -> tuple[Any, Any]:
        """One webcam frame (H, W, 3) uint8 RGB -> the same frame with poses and FPS/latency."""
        if image is None:
            return None, session
        session = session if isinstance(session, Session) else self.new_session()
        now = time.monotonic()
        c = session.controls
        built_from = (self._key(c), c.det_every, c.temporal)
        if (
            session.stream is None
            or session.stream_from != built_from
            or now - session.last > self.config.new_stream_gap_s
        ):
            session.stream, session.stream_from = self._stream_state(c), built_from
            session.started, session.frames, session.interval_s = now, 0, None
        frame = Frame(session.frames, now - session.started, _rgb(image), now)
        try:
            result = self.worker.frame(session.id, built_from[0], session.stream, frame)
        except ServerBusy as err:
            raise gr.Error(f"Sorry, {err}.") from None
        except TimeoutError:
            raise gr.Error("The server is too busy to answer; try again in a moment.") from None
        except (ValueError, OSError, RuntimeError) as err:
            logger.warning("webcam frame failed: %s", err)
            raise gr.Error(f"This frame could not be processed: {plain_reason(err)}") from None
        if result is None:  # a newer frame of this session took its place
            return gr.skip(), session
        done = time.monotonic()
        if session.frames > 0:  # FPS from the time between this session's frames, smoothed
            interval, a = done - session.last, self.config.fps_smoothing
            previous = session.interval_s
            session.interval_s = interval if previous is None else a * interval + (1 - a) * previous
        session.last = done
        session.frames += 1
        fps = 1.0 / max(session.interval_s, 1e-6) if session.interval_s else None
        return self.render(frame.image, result.poses, fps, result.latency_ms), session

    # -- files ---------------------------------------------------------------------------------

    def process_upload(
        self,
        video: str | None,
        session: Session | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way)
    ) -> tuple[str, str, str]:
        """An uploaded video file -> (rendered mp4 path, JSON Lines path, a one-line summary)."""
        if not video:
            raise gr.Error("Upload a video file first.")
        c = session.controls if isinstance(session, Session) else self.defaults
        source = Path(video)
        out_dir = Path(tempfile.mkdtemp(dir=self.jobs_dir))

        def report_progress(done: int, total: int | None) -> None:
            progress((done, total), desc="Estimating poses", unit="frames")

        progress(0.0, desc="Opening the video")
        served = ServedStream(self.worker, self._key(c), self._stream_state(c))
        report = process_video(source, out_dir, served, self.render, report_progress)
        if report.error is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
            reason = plain_reason(report.error)
            raise gr.Error(f"Could not process {source.name}: {reason}", print_exception=False)
        if report.frames == 0:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise gr.Error(f"{source.name} holds no video frames.", print_exception=False)
        summary = f"{report.frames} frames in {report.seconds:.1f} s ({report.fps:.1f} frames/s)"
        return str(report.video), str(report.jsonl), summary

    def predict_image(
        self, image: str | np.ndarray | None, session: Session | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """An image file (or (H, W, 3) uint8 RGB array) -> (rendered image, poses as
        `FramePoses.to_dict()`).

        Keypoints and boxes are in the image's pixels; a still image is not tracked, so every
        `track_id` is -1.
        """
        if image is None:
            raise gr.Error("Upload an image first.")
        if isinstance(image, np.ndarray):
            pixels = _rgb(image)
        else:
            try:
                pixels = read_image(image)
            except (ValueError, OSError):
                raise gr.Error(_NOT_AN_IMAGE, print_exception=False) from None
        c = session.controls if isinstance(session, Session) else self.defaults
        frame, key, state = Frame(0, 0.0, pixels, time.monotonic()), self._key(c), StreamState()
        try:
            result = self.worker.call(
                lambda: self.engines.get(key).process([frame], [state])[0], timeout=600
            )
        except (ValueError, OSError, RuntimeError, TimeoutError) as err:
            logger.warning("image failed: %s", err)
            raise gr.Error(f"The image could not be processed: {plain_reason(err)}") from None
        rendered = self.render(frame.image, result.poses, None, result.latency_ms)
        return rendered, result.poses.to_dict()

    def close(self) -> None:
        self.worker.close()


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
    "These settings are yours: they apply to your tabs only, and this browser remembers them. "
    "Other visitors keep their own. Detecting every N frames is faster (poses give the boxes in "
    "between); the flip test is slower but more accurate."
)


def build_ui(
    pipeline: PosePipeline, options: PipelineOptions, config: UiConfig = UiConfig()
) -> gr.Blocks:
    """The page around `pipeline` (built by `build_pipeline(options)`); queue set, not launched."""
    pose_path = Path(options.pose or default_pose_checkpoint(config.weights_dir)).resolve()
    engines = EngineCache(pipeline, pose_path, capacity=config.engines)
    temporal = getattr(pipeline.temporal, "config", None)
    temporal = temporal if isinstance(temporal, TemporalConfig) else TemporalConfig()
    defaults = Controls(
        pose_path, pipeline.config.det_every, pipeline.estimator.config.flip_test,
        pipeline.estimator.config.decoder,
        temporal.method if pipeline.temporal is not None else "none",
    )  # fmt: skip
    jobs_dir = Path(tempfile.mkdtemp(prefix="ccm-pose-ui-"))
    app = PoseApp(engines, defaults, config, jobs_dir, temporal)
    sweeper = FileSweeper(jobs_dir, config.keep_files_s, config.sweep_every_s)
    keep = (config.sweep_every_s, config.keep_files_s)

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=keep) as demo:
        gr.Markdown(_INTRO)
        session = gr.State(None, delete_callback=app.end_session)
        saved = gr.BrowserState(None, storage_key=SETTINGS_KEY)
        with gr.Accordion("Models and settings (yours only)", open=True):
            loaded = gr.Markdown(describe(engines, defaults), elem_id="loaded-models")
            pose = gr.Dropdown(app.choices, value=str(pose_path), label="Pose model",
                               info="checkpoints in weights/", elem_id="pose-model")  # fmt: skip
            with gr.Row():
                det_every = gr.Slider(1, 30, value=defaults.det_every, step=1,
                                      label="Detect people every N frames",
                                      elem_id="det-every")  # fmt: skip
                flip = gr.Checkbox(value=defaults.flip_test, label="Flip test",
                                   info="average with the mirrored image")  # fmt: skip
                decoder = gr.Dropdown(list(Controls.DECODERS), value=defaults.decoder,
                                      label="Sub-pixel decoder")  # fmt: skip
                temporal_choice = gr.Dropdown(list(Controls.TEMPORAL), value=defaults.temporal,
                                              label="Smoothing across frames")  # fmt: skip
            gr.Markdown(_HELP_SETTINGS)
        controls = [pose, det_every, flip, decoder, temporal_choice]
        demo.load(app.restore, saved, [session, loaded, *controls], api_visibility="private")
        # `change` fires however the value changed (typing, arrow keys, a drag, a click).
        gr.on(
            [c.change for c in controls], app.apply_settings, [*controls, session],
            [session, saved, loaded, pose], trigger_mode="always_last",
            api_visibility="private", concurrency_limit=None,
        )  # fmt: skip

        with gr.Tabs():
            with gr.Tab(TAB_TITLES[0]):
                gr.Markdown(
                    "Allow the browser to use your camera and press record. The right side shows "
                    "the skeletons, track ids, frames per second and the delay of each frame. "
                    f"Up to {config.max_streams} people can stream at once."
                )
                with gr.Row():
                    camera = local_image(sources=["webcam"], streaming=True, type="numpy",
                                         label="Camera", elem_id="camera")  # fmt: skip
                    live = memory_image(show_label=False, interactive=False, elem_id="poses")
                camera.stream(
                    app.webcam_frame, [camera, session], [live, session],
                    stream_every=config.stream_every_s, time_limit=config.stream_time_limit_s,
                    concurrency_limit=None, concurrency_id="webcam", show_progress="hidden",
                    api_visibility="private",
                )  # fmt: skip

            with gr.Tab(TAB_TITLES[1]):
                gr.Markdown(
                    f"Upload a video (up to {config.max_upload_mb} MB). Every frame is processed; "
                    "you get the video with skeletons drawn (H.264 mp4) and the poses of every "
                    "frame as JSON Lines (one line per frame, image pixels). Files are deleted "
                    f"from the server {config.keep_files_s // 60} minutes after they were made."
                )
                with gr.Row():
                    with gr.Column():
                        upload = local_video(sources=["upload"], label="Video file")
                        run_video = gr.Button("Process video", variant="primary")
                    with gr.Column():
                        rendered_video = gr.Video(label="Video with poses", interactive=False)
                        jsonl = gr.File(label="Poses (JSON Lines)", interactive=False)
                        summary = gr.Markdown()
                run_video.click(
                    app.process_upload, [upload, session], [rendered_video, jsonl, summary],
                    api_name="process_video", concurrency_limit=2, concurrency_id="files",
                )  # fmt: skip

            with gr.Tab(TAB_TITLES[2]):
                gr.Markdown(
                    "Upload a photo. You get it back with skeletons drawn, and the poses as JSON: "
                    "a box, a score and 17 keypoints [x, y, score] per person, in image pixels."
                )
                with gr.Row():
                    with gr.Column():
                        photo = local_image(sources=["upload", "clipboard"], type="filepath",
                                           label="Image")  # fmt: skip
                        run_image = gr.Button("Find poses", variant="primary")
                    with gr.Column():
                        rendered_image = gr.Image(label="Image with poses", format="png",
                                                  interactive=False)  # fmt: skip
                        poses_json = gr.JSON(label="Poses")
                run_image.click(
                    app.predict_image, [photo, session], [rendered_image, poses_json],
                    api_name="predict_image", concurrency_limit=2, concurrency_id="files",
                )  # fmt: skip

    demo.queue(max_size=config.queue_size, default_concurrency_limit=2)
    demo.pose_app = app  # the handlers, for tests and tools that inspect the serving state
    weakref.finalize(demo, _shutdown, app, sweeper, jobs_dir)
    return demo


def _shutdown(app: PoseApp, sweeper: FileSweeper, jobs_dir: Path) -> None:
    app.close()
    sweeper.close()
    shutil.rmtree(jobs_dir, ignore_errors=True)


def serve(
    demo: gr.Blocks,
    port: int | None = None,
    share: bool = False,
    max_upload_mb: int = 500,
    block: bool = True,
) -> str:
    """Serve `demo` on 127.0.0.1 (port: `resolve_port`); returns the local URL.

    `block` False returns at once with the server running on a thread (`demo.close()` stops it).
    Unexpected errors show as "Error" in the page (their text stays in the log, where server
    paths belong); the handlers turn the expected ones into sentences.
    """
    _, url, share_url = demo.launch(
        server_name=HOST, server_port=resolve_port(port), share=share,
        max_file_size=f"{max_upload_mb}mb", prevent_thread_lock=not block, show_error=False,
        quiet=not block, ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False,
        footer_links=["api", "settings"], css=_CSS,
        theme=gr.themes.Default(font=_THEME_FONTS, font_mono=_THEME_MONO),
    )  # fmt: skip
    if share_url:
        logger.info("public share link: %s", share_url)
    return url


# The model list shows whole file names (they are long: arch, dataset, input size).
_CSS = "#pose-model input, #pose-model .token, #pose-model li { text-overflow: clip; }"


def launch(
    options: PipelineOptions, port: int | None = None, share: bool = False, max_upload_mb: int = 500
) -> None:
    """Build the pipeline once and serve the page until interrupted."""
    resolve_port(port)  # a bad port fails before the models load
    pipeline = build_pipeline(options)
    demo = build_ui(pipeline, options, UiConfig(max_upload_mb=max_upload_mb))
    serve(demo, port, share, max_upload_mb, block=True)
