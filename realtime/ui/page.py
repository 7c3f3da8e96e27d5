"""The browser demo: live webcam, video upload and single images, served by Gradio on 127.0.0.1.

    python app.py ui [--port N]          # then open http://127.0.0.1:7860/

`launch(options, ...)` builds the pipeline once and serves `build_ui(pipeline, options)`. The page
has three tabs ("Webcam", "Video", "Image") and one settings panel above them. This module lays
the page out; `ui_sessions` holds the handlers, `ui_settings` the settings, `ui_media` the
inputs and outputs, `serving` the engine cache and the one thread that runs the models, and
`live` the webcam tab's live view (the camera plays in the page, poses come back over a
WebSocket; the image stream below it shows only where that cannot connect).

Shared between visitors: only the loaded models, the person detector and the pose engines in an
`PipelineCache` (one per distinct checkpoint, precision, flip test and decoder, the least recently
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

import inspect
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path

import gradio as gr

from realtime.device import resolve_device
from realtime.stream.assemble import PipelineSpec, build_live_pipeline, default_pose_checkpoint
from realtime.stream.pipeline import PosePipeline
from realtime.stream.serving import PipelineCache
from realtime.ui.live import HEAD as LIVE_HEAD
from realtime.ui.live import mount_live
from realtime.ui.media import (
    FileSweeper,
    limit_malloc_arenas,
    local_image,
    local_video,
    memory_image,
)
from realtime.ui.sessions import PoseApp, Session
from realtime.ui.settings import Controls, UiConfig, describe
from realtime.ui.weights_notice import add_weights_notice

__all__ = ["PoseApp", "Session", "UiConfig", "build_ui", "launch", "resolve_port", "serve"]

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
    pipeline: PosePipeline, options: PipelineSpec, config: UiConfig | None = None
) -> gr.Blocks:
    """The page around `pipeline` (`build_live_pipeline(options)`); queue set, not launched."""
    config = config or UiConfig()
    pose_path = Path(options.pose or default_pose_checkpoint(config.weights_dir)).resolve()
    engines = PipelineCache(pipeline, pose_path, capacity=config.engines)
    temporal = options.temporal
    defaults = Controls(
        pose_path, pipeline.config.det_every or 1, pipeline.estimator.config.flip_test,
        pipeline.estimator.config.decoder,
        pipeline.temporal.method if pipeline.temporal is not None else "none",
    )  # fmt: skip
    jobs_dir = Path(tempfile.mkdtemp(prefix="ccm-pose-ui-"))
    app = PoseApp(engines, defaults, config, jobs_dir, temporal)
    sweeper = FileSweeper(jobs_dir, config.keep_files_s, config.sweep_every_s)
    keep = (config.sweep_every_s, config.keep_files_s)

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=keep) as demo:
        gr.Markdown(_INTRO)
        add_weights_notice(demo, pose_path, pipeline.detector.config.weights, config.weights_dir,
                           str(resolve_device(options.device)))  # fmt: skip
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
        restored = demo.load(
            app.restore, saved, [session, loaded, *controls], api_visibility="private"
        )
        # `change` fires however the value changed (typing, arrow keys, a drag, a click).
        gr.on(
            [c.change for c in controls], app.apply_settings, [*controls, session],
            [session, saved, loaded, pose], trigger_mode="always_last",
            api_visibility="private", concurrency_limit=None,
        )  # fmt: skip

        with gr.Tabs():
            with gr.Tab(TAB_TITLES[0]):
                gr.Markdown(
                    "Press Record and allow the browser to use your camera. Your camera plays "
                    "here at its own rate, with the skeletons, track ids, pose updates per second "
                    "and the delay from the camera to the skeletons drawn over it. "
                    f"Up to {config.max_streams} people can stream at once."
                )
                gr.HTML("", elem_id="live-view")  # filled by live.js
                token = gr.HTML("", elem_id="live-session", padding=False)
                restored.then(app.live_token, session, token, api_visibility="private")
                with gr.Row(elem_id="webcam-fallback"):
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


def serve(demo: gr.Blocks, port: int | None = None, share: bool = False, block: bool = True) -> str:
    """Serve `demo` (made by `build_ui`) on 127.0.0.1 (port: `resolve_port`), taking uploads up
    to its `UiConfig.max_upload_mb`; returns the local URL.

    `block` False returns at once with the server running on a thread (`demo.close()` stops it).
    Unexpected errors show as "Error" in the page (their text stays in the log, where server
    paths belong); the handlers turn the expected ones into sentences.
    """
    _, url, share_url = demo.launch(
        server_name=HOST, server_port=resolve_port(port), share=share,
        max_file_size=f"{demo.pose_app.config.max_upload_mb}mb", prevent_thread_lock=True,
        show_error=False,
        quiet=not block, ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False,
        footer_links=["api", "settings"], css=_CSS, head=LIVE_HEAD,
        theme=gr.themes.Default(font=_THEME_FONTS, font_mono=_THEME_MONO), **_NO_SELF_CHECK,
    )  # fmt: skip
    mount_live(demo.server_app, demo.pose_app)
    if share_url:
        logger.info("public share link: %s", share_url)
    if block:
        demo.block_thread()
    return url


# Gradio asks its own page once at start and gives up ("localhost is not accessible") when that
# takes over 3 s, as on a loaded machine; the page is served on 127.0.0.1, so the check is moot.
_NO_SELF_CHECK = (
    {"_frontend": False} if "_frontend" in inspect.signature(gr.Blocks.launch).parameters else {}
)

# The model list shows whole file names (they are long: arch, dataset, input size).
_CSS = "#pose-model input, #pose-model .token, #pose-model li { text-overflow: clip; }" + (
    # The live view: the camera's video with the skeleton canvas over it; the older image
    # stream shows only where the live connection failed (live.js marks it .ccm-shown).
    ".ccm-live-view { position: relative; width: fit-content; max-width: 100%; }"
    ".ccm-live-view video { display: block; max-width: 100%; }"
    ".ccm-live-view canvas { position: absolute; inset: 0; width: 100%; height: 100%; }"
    ".ccm-live-view.ccm-hidden { display: none; }"
    ".ccm-live-bar { display: flex; gap: 1em; align-items: center; margin-top: 0.5em; }"
    "#webcam-fallback { display: none; } #webcam-fallback.ccm-shown { display: flex; }"
)


def launch(
    options: PipelineSpec,
    port: int | None = None,
    share: bool = False,
    config: UiConfig | None = None,
) -> None:
    """Build the pipeline once and serve the page until interrupted."""
    resolve_port(port)  # a bad port fails before the models load
    limit_malloc_arenas()
    pipeline, options = build_live_pipeline(options)
    demo = build_ui(pipeline, options, config or UiConfig())
    serve(demo, port, share, block=True)
