"""The rendered mp4 keeps the source's timestamps: a variable-frame-rate input does not drift
onto a 1/fps grid, and a constant rate stays exact."""

from __future__ import annotations

from fractions import Fraction

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
