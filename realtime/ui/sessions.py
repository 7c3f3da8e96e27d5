"""The browser demo's sessions and the handlers behind its events.

`PoseApp` holds the shared `PipelineCache` and its `ServingWorker`; every handler takes the
visitor's `Session` (Gradio session state) and works with its settings only.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import secrets
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import gradio as gr
import numpy as np
from PIL import Image

from realtime.batch.videos import process_video
from realtime.io.frames import Frame, rgb_image
from realtime.io.images import read_image
from realtime.render import render_frame
from realtime.stream.serving import PipelineCache, ServedStream, ServerBusy, ServingWorker
from realtime.stream.state import StreamState
from realtime.temporal.fusion import TemporalConfig, TemporalFusion
from realtime.ui.media import TooManyPixels, check_pixels, plain_reason
from realtime.ui.settings import Controls, UiConfig, describe, pose_choices

logger = logging.getLogger(__name__)

_NOT_AN_IMAGE = "That file is not an image this page can read (PNG, JPEG, WebP, BMP or TIFF)."


@dataclass
class Session:
    """One browser session: its settings, and its webcam stream's state, clock and FPS.

    `token` names the session to the page's live WebSocket (`realtime.ui.live`)."""

    id: int
    controls: Controls
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
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
        engines: PipelineCache,
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
        self._sessions: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()

    def new_session(self, controls: Controls | None = None) -> Session:
        session = Session(next(self._ids), controls or self.defaults)
        self._sessions[session.token] = session
        return session

    def new_stream_id(self) -> int:
        """An id for a stream of its own (a live connection), distinct from every session's."""
        return next(self._ids)

    def find_session(self, token: str) -> Session:
        """The session whose page holds `token`; a new one with the defaults if none does."""
        session = self._sessions.get(token)
        return session if session is not None else self.new_session()

    def live_token(self, session: Session | None) -> str:
        """HTML that hands the page's script this session's token (`#live-session`)."""
        session = session if isinstance(session, Session) else self.new_session()
        return f'<span data-session="{html.escape(session.token)}"></span>'

    def end_session(self, session: Session | None) -> None:
        """Gradio calls this when a session's state is deleted (its tab closed)."""
        if isinstance(session, Session):
            self.worker.end_stream(session.id)

    def engine_key(self, c: Controls):
        return self.engines.key(c.pose, c.flip_test, c.decoder)

    def stream_state(self, c: Controls, track: bool = True) -> StreamState:
        method = c.temporal if track else "none"
        temporal = None
        if method != "none":
            temporal = TemporalFusion(dataclasses.replace(self.temporal, method=method))
        return StreamState(c.det_every if track else 1, temporal, live=True)

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
                self.worker.call(lambda: self.engines.get(self.engine_key(wanted)), timeout=600)
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
        try:
            check_pixels(image.shape[1], image.shape[0], self.config.max_pixels)
        except TooManyPixels as err:
            logger.info("webcam frame refused: %s", err)
            raise gr.Error(f"{err}.", print_exception=False) from None
        now = time.monotonic()
        c = session.controls
        built_from = (self.engine_key(c), c.det_every, c.temporal)
        if (
            session.stream is None
            or session.stream_from != built_from
            or now - session.last > self.config.new_stream_gap_s
        ):
            session.stream, session.stream_from = self.stream_state(c), built_from
            session.started, session.frames, session.interval_s = now, 0, None
        try:
            pixels = rgb_image(image, "the webcam frame")
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None
        frame = Frame(session.frames, now - session.started, pixels, now)
        try:
            result = self.worker.frame(session.id, built_from[0], session.stream, frame)
        except ServerBusy as err:
            logger.info("webcam refused: %s", err)
            raise gr.Error(f"Sorry, {err}.", print_exception=False) from None
        except TimeoutError:
            logger.info("webcam frame timed out")
            raise gr.Error(
                "The server is too busy to answer; try again in a moment.", print_exception=False
            ) from None
        except (ValueError, OSError, RuntimeError) as err:
            logger.warning("webcam frame failed: %s", err)
            raise gr.Error(
                f"This frame could not be processed: {plain_reason(err)}", print_exception=False
            ) from None
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
            logger.info("video: no file sent")
            raise gr.Error("Upload a video file first.", print_exception=False)
        c = session.controls if isinstance(session, Session) else self.defaults
        source = Path(video)
        try:
            check_pixels(*_video_size(source), self.config.max_pixels)
        except TooManyPixels as err:
            logger.info("video refused: %s", err)
            raise gr.Error(f"{err}.", print_exception=False) from None
        except (ValueError, OSError, IndexError, av.error.FFmpegError):
            pass  # process_video says what is wrong with the file
        out_dir = Path(tempfile.mkdtemp(dir=self.jobs_dir))

        def report_progress(done: int, total: int | None) -> None:
            progress((done, total), desc="Estimating poses", unit="frames")

        progress(0.0, desc="Opening the video")
        served = ServedStream(self.worker, self.engine_key(c), self.stream_state(c))
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
            logger.info("image: no file sent")
            raise gr.Error("Upload an image first.", print_exception=False)
        try:
            if isinstance(image, np.ndarray):
                check_pixels(image.shape[1], image.shape[0], self.config.max_pixels)
                pixels = rgb_image(image)
            else:
                check_pixels(*_image_size(image, self.config.max_pixels), self.config.max_pixels)
                pixels = read_image(image)
        except TooManyPixels as err:
            logger.info("image refused: %s", err)
            raise gr.Error(f"{err}.", print_exception=False) from None
        except (ValueError, OSError):
            logger.info("image refused: not an image this page reads")
            raise gr.Error(_NOT_AN_IMAGE, print_exception=False) from None
        c = session.controls if isinstance(session, Session) else self.defaults
        frame, key = Frame(0, 0.0, pixels, time.monotonic()), self.engine_key(c)
        state = StreamState()
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


def _image_size(path: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding its pixels; (0, 0)
    where Pillow cannot read the header (`read_image` then decides); TooManyPixels for one
    over Pillow's own limit (far over `max_pixels`)."""
    try:
        with Image.open(path) as image:
            return image.size
    except Image.DecompressionBombError:  # over Pillow's own limit, far over ours
        over = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise TooManyPixels(
            f"The picture has over {over:.0f} megapixels; this page takes at most "
            f"{max_pixels / 1e6:g} megapixels"
        ) from None
    except (OSError, ValueError, SyntaxError, ImportError):  # ImportError: ultralytics patches
        return 0, 0  # Image.open to try an optional HEIF plugin on files Pillow cannot read


def _video_size(path: Path) -> tuple[int, int]:
    """(width, height) of a video file's first video stream, from its header."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height
