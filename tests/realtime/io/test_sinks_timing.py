"""The rendered mp4 keeps the source's timestamps: a variable-frame-rate input does not drift
onto a 1/fps grid, and a constant rate stays exact; the same frames make the same bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from realtime.io.sinks import Mp4Writer


def _times(path) -> list[float]:
    with av.open(str(path)) as container:
        return [frame.time for frame in container.decode(video=0)]


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    # About 25 fps on average, each frame up to 18 ms off the grid (a phone's VFR clip).
    rng = np.random.default_rng(0)
    pts = np.round(np.arange(30) / 25 + rng.uniform(-0.018, 0.018, 30), 3)
    pts[0] = 0.0
    image = np.full((32, 48, 3), 128, np.uint8)
    with Mp4Writer(tmp_path / "vfr.mp4", 25.0) as writer:
        for t in pts:
            writer.write(image, float(t))
    np.testing.assert_allclose(_times(tmp_path / "vfr.mp4"), pts, atol=1 / 90000)


@pytest.mark.parametrize("fps", [24000 / 1001, 30000 / 1001, 25.0, 12.5])
def test_constant_rates_land_exactly_on_their_grid(tmp_path, fps):
    image = np.full((32, 48, 3), 128, np.uint8)
    rate = Fraction(fps).limit_denominator(1001)
    with Mp4Writer(tmp_path / "cfr.mp4", fps) as writer:
        for k in range(10):
            writer.write(image, float(k / rate))
        writer.write(image)  # no pts: one frame period after the last
    expected = [float(k / rate) for k in range(11)]
    np.testing.assert_allclose(_times(tmp_path / "cfr.mp4"), expected, atol=1e-9)


_ENCODE = """
import sys
import numpy as np
from realtime.io.sinks import Mp4Writer
rng = np.random.default_rng(0)
with Mp4Writer(sys.argv[1], 10.0) as writer:
    for i in range(6):
        writer.write(np.roll(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8), i, axis=1))
"""


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two CPUs to compare against one",
)
def test_the_same_frames_make_the_same_mp4_bytes_on_one_cpu_or_many(tmp_path: Path):
    # x264 cuts a frame into one slice per encoder thread: with the count left to the machine,
    # a worker pinned to one CPU (a Ray worker, a container) wrote other bytes than the CLI.
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    pinned = "import os, runpy, sys; os.sched_setaffinity(0, {0}); sys.argv = sys.argv[1:]; "
    pinned += "runpy.run_path(sys.argv[0], run_name='__main__')"
    script = tmp_path / "encode.py"
    script.write_text(_ENCODE)
    many, one = tmp_path / "many.mp4", tmp_path / "one.mp4"
    for command in (
        [sys.executable, str(script), str(many)],
        [sys.executable, "-c", pinned, str(script), str(one)],
    ):
        subprocess.run(command, env=env, check=True, cwd=root, capture_output=True)
    assert many.read_bytes() == one.read_bytes()
    assert b"threads=2 " in many.read_bytes()
