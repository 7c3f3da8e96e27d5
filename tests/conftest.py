from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch

# Networks converted for OpenVINO (and ultralytics' settings) go to a folder of this test
# session's, which its subprocesses inherit, not to the user's ~/.cache: set before any test
# module imports the package.
CACHE_HOME = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ccm-pose-tests-cache-")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(CACHE_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def torch_threads():
    """Each test starts with the process's torch thread count: a pipeline with both networks on
    OpenVINO sets PyTorch to one thread for the process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module, restored afterwards.

    The tensors in these modules are small: one thread runs them faster than two threads handed
    between two busy cores, and calls compared for exact equality all use the same count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clip_frame(i: int, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a smooth gradient and a white square in the top-left corner that
    moves right by one pixel per frame, so the orientation of a frame is plain to see."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [60 + 120 * x / width, 60 + 120 * y / height, np.full_like(x, 90 + (i % 7) * 5)], axis=-1
    ).astype(np.uint8)
    side = max(4, min(height, width) // 6)
    image[2 : 2 + side, 2 + i : 2 + i + side] = 255
    return image


def write_clip(
    path: Path,
    frames: int = 12,
    size: tuple[int, int] = (48, 64),
    fps: int = 10,
    rotation: float | None = None,
    faststart: bool = False,
    codec: str = "libx264",
) -> Path:
    """A video of `clip_frame`s, (height, width) = `size`, stored unrotated, in the container
    its suffix names (H.264 unless `codec` says otherwise, e.g. "mpeg4" for an .avi);
    `rotation` writes a display matrix (counter-clockwise degrees, as PyAV's
    VideoFrame.rotation reads it back); `faststart` puts the moov box before the media data."""
    height, width = size
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(clip_frame(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture
def make_clip():
    return write_clip


@pytest.fixture
def clip_image():
    return clip_frame
