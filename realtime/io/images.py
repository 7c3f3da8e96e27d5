"""Still images as frames: `read_image` (any bit depth, alpha over white, EXIF orientation
applied) and `ImageFolderSource`, a folder's images in natural order."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from realtime.io.frames import Frame, FrameSource, SourceInfo
from realtime.io.image_header import exif_orientation

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_FPS = 30.0  # used when a source does not report its frame rate


def natural_key(path: Path | str) -> tuple:
    """Sort key so that img2.png comes before img10.png (path parts compared in turn, case
    ignored, then the path as written to break ties)."""
    text = Path(path).as_posix()
    parts = tuple(
        tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", part))
        for part in PurePosixPath(text).parts
    )
    return parts, text


# EXIF orientation (tag 0x0112) -> (counter-clockwise quarter turns, mirror first).
_EXIF_ORIENTATIONS = {1: (0, False), 2: (0, True), 3: (2, False), 4: (2, True),
                      5: (1, True), 6: (3, False), 7: (3, True), 8: (1, False)}  # fmt: skip


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, C-contiguous, in the orientation EXIF says to show.

    8- and 16-bit (scaled by 255/65535), gray, gray+alpha and RGBA images are accepted;
    transparent pixels are composited over white. Raises ValueError naming the file if it
    cannot be decoded or is too large (`realtime.io.image_header.max_image_pixels`).
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"{path}: cannot read the file: {err.strerror or err}") from err
    orientation = exif_orientation(path)  # from the header; refuses a huge image undecoded
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image (damaged, or a format OpenCV lacks)")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) * (255 / 65535)).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"{path}: {image.dtype} pixels are not supported (8 or 16 bit only)")
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    if channels in (2, 4):  # alpha last: composite over white
        alpha = image[..., -1:].astype(np.float32) / 255
        color = image[..., :-1].astype(np.float32)
        image = np.round(color * alpha + 255 * (1 - alpha)).astype(np.uint8)
        channels -= 1
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"{path}: {image.shape[2]}-channel images are not supported")
    turns, mirror = _EXIF_ORIENTATIONS.get(orientation, (0, False))
    if mirror:
        image = cv2.flip(image, 1)
    return np.ascontiguousarray(turn(image, turns))


class ImageFolderSource(FrameSource):
    """The images of a folder in natural order (img2 before img10), one frame each.

    Frame pts are index / fps. Images may differ in size; `info` gives the first one's.
    """

    def __init__(
        self, folder: str | Path, realtime: bool, queue_size: int = 8, fps: float = DEFAULT_FPS
    ) -> None:
        super().__init__(realtime, queue_size)
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        self._paths = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=natural_key,
        )
        if not self._paths:
            raise ValueError(
                f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder"
            )
        self._first = read_image(self._paths[0])
        self.info = SourceInfo(
            name=str(folder),
            fps=fps,
            width=self._first.shape[1],
            height=self._first.shape[0],
            frame_count=len(self._paths),
            audio=None,
            live=False,
        )

    def _read(self) -> Iterator[Frame]:
        fps = self.info.fps
        yield Frame(0, 0.0, self._first, time.monotonic())
        self._first = None
        for index, path in enumerate(self._paths[1:], start=1):
            yield Frame(index, index / fps, read_image(path), time.monotonic())

    def _release(self) -> None:
        self._first = None


def quarter_turns(degrees: float) -> int:
    """Counter-clockwise quarter turns (0-3) nearest to a display rotation in degrees."""
    return round(degrees / 90) % 4


_ROTATE_CODES = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def turn(image: np.ndarray, quarter_turns: int) -> np.ndarray:
    """`image` turned counter-clockwise by `quarter_turns` x 90 degrees (C-contiguous)."""
    return cv2.rotate(image, _ROTATE_CODES[quarter_turns]) if quarter_turns else image
