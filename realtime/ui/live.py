"""The webcam tab's live transport: a WebSocket on the page's own server, JPEG up, JSON down.

    GET /live/live.js        the page's script (realtime/ui/static/live.js), served by the app
    WS  /live/ws?session=T   one live webcam stream of the visitor whose page holds token T

The browser plays its camera itself and draws the skeletons over it; it sends a frame only when
fewer than two are unanswered, so the server never has more than two of a visitor's frames and
nothing queues. Each binary message is a 12-byte header (uint32 frame index, float64 time in ms
at which the page showed the frame, both little-endian) and the frame as a JPEG. The server
answers, in order, each frame with one JSON Lines record of the CLI (`FramePoses.to_dict()`:
`{"frame", "pts", "poses"}`, keypoints and boxes in camera pixels, `pts` in seconds since the
stream's first frame). The first message on a connection is `{"hello": {...}}` (how to draw:
limbs, colours, keypoint threshold); an error is `{"error": sentence, "fatal": bool}`, and a
fatal one (the server is full, a frame too large) closes the connection.

The connection holds its place among the `UiConfig.max_streams` webcams until it closes (a
closed tab closes it at once); a visitor beyond them gets one busy message, never someone
else's place. The settings used are the visitor's session's, read at every frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse

from realtime.io.frames import Frame
from realtime.stream.serving import ServerBusy
from realtime.stream.state import StreamState
from realtime.ui.media import TooManyPixels, check_pixels
from realtime.ui.sessions import PoseApp, Session

logger = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parent / "static" / "live.js"
SCRIPT_ROUTE = "/live/live.js"
SOCKET_ROUTE = "/live/ws"
HEAD = f'<script src="{SCRIPT_ROUTE.lstrip("/")}" defer></script>'
_HEADER = struct.Struct("<Id")
_BUSY_CLOSE = 1013  # "try again later"
_REFUSED_CLOSE = 1008  # policy violation: a frame the server does not take


class FrameRefused(ValueError):
    """A frame the server does not take (not a JPEG, too many pixels); its text is for people."""


def decode_frame(data: bytes, max_pixels: int) -> tuple[int, float, np.ndarray]:
    """A binary message -> (frame index, ms when the page showed it, (H, W, 3) uint8 RGB)."""
    if len(data) <= _HEADER.size:
        raise FrameRefused("a frame message needs a 12-byte header and a JPEG")
    index, shown_ms = _HEADER.unpack_from(data)
    jpeg = np.frombuffer(data, np.uint8, offset=_HEADER.size)
    size = _jpeg_size(jpeg.tobytes()[:65536])
    if size is None:
        raise FrameRefused("a frame must be a JPEG image")
    check_pixels(*size, max_pixels)
    image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    if image is None:
        raise FrameRefused("a frame could not be decoded as a JPEG image")
    return index, shown_ms, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, or None if there is none."""
    if head[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker, length = head[at + 1], int.from_bytes(head[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


class LiveStream:
    """One live connection: its own track history, with the session's current settings."""

    def __init__(self, app: PoseApp, session: Session) -> None:
        self.app, self.session = app, session
        self.id = app.new_stream_id()
        self.state: StreamState | None = None
        self.built_from: tuple | None = None
        self.first_ms: float | None = None
        self.last: tuple[int, float] | None = None  # (frame number, ms) of the newest taken

    def process(self, data: bytes) -> dict[str, Any] | None:
        """One frame message -> its poses as a JSON Lines record (None if a newer one won), or
        `{"skipped": n}` for a frame older than one already taken (messages may overtake each
        other on the client: its tracks only go forward in time)."""
        index, shown_ms, image = decode_frame(data, self.app.config.max_pixels)
        if self.last is not None and (index <= self.last[0] or shown_ms <= self.last[1]):
            return {"skipped": index}
        self.last = index, shown_ms
        c = self.session.controls
        key = self.app.engine_key(c)
        built_from = (key, c.det_every, c.temporal)
        if self.state is None or built_from != self.built_from:
            self.state, self.built_from = self.app.stream_state(c), built_from
        self.first_ms = shown_ms if self.first_ms is None else self.first_ms
        frame = Frame(index, (shown_ms - self.first_ms) / 1000, image, time.monotonic())
        result = self.app.worker.frame(self.id, key, self.state, frame)
        return None if result is None else result.poses.to_dict()


def mount_live(server: FastAPI, app: PoseApp) -> None:
    """Add the script and the WebSocket routes to the page's FastAPI `server`."""

    async def script() -> FileResponse:
        return FileResponse(SCRIPT, media_type="text/javascript")

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        session = app.find_session(websocket.query_params.get("session", ""))
        stream = LiveStream(app, session)
        try:
            app.worker.open_stream(stream.id)
        except (ServerBusy, RuntimeError) as err:
            logger.info("live webcam refused: %s", err)
            await _refuse(websocket, f"Sorry, {err}.", _BUSY_CLOSE)
            return
        try:
            await websocket.send_text(json.dumps({"hello": _style(app)}))
            while True:
                data = await websocket.receive_bytes()
                try:
                    record = await asyncio.to_thread(stream.process, data)
                except (FrameRefused, TooManyPixels) as err:
                    logger.info("live webcam frame refused: %s", err)
                    await _refuse(websocket, f"This frame was refused: {err}.", _REFUSED_CLOSE)
                    return
                except TimeoutError:
                    record = {"error": "The server is too busy to answer; frame skipped."}
                if record is not None:
                    await websocket.send_text(json.dumps(record))
        except WebSocketDisconnect:
            pass
        except (ValueError, OSError, RuntimeError) as err:  # the models failed on a frame
            logger.warning("live webcam stream %d failed: %s", stream.id, err)
            await _refuse(websocket, "The server could not process your camera's frames.", 1011)
        finally:
            app.worker.end_stream(stream.id)

    server.add_api_route(SCRIPT_ROUTE, script, methods=["GET"], include_in_schema=False)
    server.add_api_websocket_route(SOCKET_ROUTE, socket)
    # First in line: Gradio's own routes, added before, would answer a WebSocket with 404.
    routes = server.router.routes
    routes[:0] = [routes.pop(), routes.pop()]


async def _refuse(websocket: WebSocket, sentence: str, code: int) -> None:
    try:
        await websocket.send_text(json.dumps({"error": sentence, "fatal": True}))
        await websocket.close(code, sentence[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass  # the page went away first


def _style(app: PoseApp) -> dict[str, Any]:
    """How the page draws poses, as the server's renderer does (`RenderConfig`)."""
    render = asdict(app.config.render)
    keys = ("keypoint_thr", "limbs", "limb_colors", "keypoint_colors")
    return {k: render[k] for k in keys} | {"max_pixels": app.config.max_pixels}
