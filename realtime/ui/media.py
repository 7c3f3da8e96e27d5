"""What the browser demo sends and receives: local files only, frames in memory, files aged out.

- `local_image` / `local_video`: Gradio inputs that take uploads and the webcam, and refuse a URL
  an API client sends instead of fetching it (nothing touches the network at run time).
- `memory_image`: an output image sent as an in-memory JPEG (a data URL), never written to disk,
  for the webcam stream's many frames.
- `FileSweeper`: deletes what is older than an age under a folder, on a timer.
- `plain_reason`: an error's text for a person: no server paths, no errno numbers.
- `check_pixels`: the pixel limit every image, video and webcam frame input is held to.
- `limit_malloc_arenas`: keeps the server's memory flat as visitors come and go.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import io
import logging
import re
import shutil
import threading
import time
from pathlib import Path
from typing import TypeVar

import gradio as gr
import numpy as np
from gradio.data_classes import ImageData
from gradio_client import utils as client_utils
from PIL import Image

from realtime.batch.report import describe

logger = logging.getLogger(__name__)

C = TypeVar("C", bound=gr.components.Component)

_URL_REFUSED = "This page takes files (an upload or the webcam), never a URL; send the file."


def _refuse_url(value) -> None:
    if value is not None and client_utils.is_http_url_like(str(value)):
        raise gr.Error(_URL_REFUSED, print_exception=False)


def _without_urls(component: C) -> C:
    """Refuse http(s) URLs where Gradio would download them into its cache.

    Methods are replaced on the instance: a subclass of a Gradio component would make Gradio
    write a type stub (.pyi) next to this module."""
    move, move_async = (
        component.move_resource_to_block_cache,
        component.async_move_resource_to_block_cache,
    )

    def checked_move(url_or_file_path):
        _refuse_url(url_or_file_path)
        return move(url_or_file_path)

    async def checked_move_async(url_or_file_path):
        _refuse_url(url_or_file_path)
        return await move_async(url_or_file_path)

    component.move_resource_to_block_cache = checked_move
    component.async_move_resource_to_block_cache = checked_move_async
    return component


def local_image(**kwargs) -> gr.Image:
    """`gr.Image` without URL inputs. With `type="filepath"` it hands over the uploaded file
    as it is (the handler decodes it, and says so when it is no image)."""
    image = _without_urls(gr.Image(**kwargs))
    if image.type == "filepath":

        def preprocess(payload: ImageData | None) -> str | None:
            if payload is None:
                return None
            if payload.path is None:
                raise gr.Error("Send the image as a file.", print_exception=False)
            return payload.path

        image.preprocess = preprocess
    return image


def local_video(**kwargs) -> gr.Video:
    """`gr.Video` without URL inputs."""
    return _without_urls(gr.Video(**kwargs))


def memory_image(quality: int = 85, **kwargs) -> gr.Image:
    """An output image sent to the browser as an in-memory JPEG; nothing is written to disk."""
    image = gr.Image(format="jpeg", **kwargs)

    def postprocess(value: np.ndarray | None) -> ImageData | None:
        if value is None:
            return None
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(value, dtype=np.uint8)).save(buffer, "JPEG", quality=quality)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        return ImageData(url=f"data:image/jpeg;base64,{data}", mime_type="image/jpeg")

    image.postprocess = postprocess
    return image


class FileSweeper:
    """Every `every_s` seconds, deletes the entries of `folder` last changed over `age_s` ago."""

    def __init__(self, folder: Path, age_s: float, every_s: float) -> None:
        self.folder, self.age_s, self.every_s = Path(folder), age_s, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ccm-pose-sweeper", daemon=True)
        self._thread.start()

    def sweep(self) -> int:
        """Delete what is too old now; returns how many entries went."""
        cutoff, removed = time.time() - self.age_s, 0
        for entry in list(self.folder.iterdir()) if self.folder.is_dir() else []:
            try:
                if entry.lstat().st_mtime < cutoff:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    removed += 1
            except OSError as err:  # gone already, or in use: the next sweep tries again
                logger.debug("could not delete %s: %s", entry, err)
        return removed

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sweep()


_ERRNO = re.compile(r"\[Errno -?\d+\]\s*|\[WinError \d+\]\s*")
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:]+)+[/\\]?")


def plain_reason(err: BaseException | str) -> str:
    """An error in one line for a person (`describe`), its paths shortened to their file name and
    its errno gone: a visitor sees no server path."""
    text = describe(err) if isinstance(err, BaseException) else err.strip()
    text = _ERRNO.sub("", text)
    text = _PATH.sub(lambda m: Path(m.group(0).rstrip("/\\")).name or "a file", text)
    return text


class TooManyPixels(ValueError):
    """An image or frame over the page's pixel limit; its text says both sizes."""


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Raise TooManyPixels if a width x height picture is over `max_pixels`."""
    if width * height > max_pixels:
        raise TooManyPixels(
            f"The picture is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); "
            f"this page takes at most {max_pixels / 1e6:g} megapixels"
        )


_M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does); True if it took effect.

    Every thread that handles a visitor would otherwise get an arena of its own that is not
    given back when the visitor leaves, so the server's memory grows with each new visitor.
    Only arenas made after the call are affected: call it before serving. Elsewhere than glibc
    it does nothing."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        return False
    done = bool(mallopt(_M_ARENA_MAX, arenas))
    logger.debug("malloc arenas limited to %d: %s", arenas, done)
    return done
