"""Small media files bundled with the package, so demos and tests need nothing else."""

from pathlib import Path

# 5 s (50 frames at 10 fps, 768x576, H.264) of OpenCV's vtest.avi pedestrian video; see LICENSE.
VTEST_SHORT = Path(__file__).with_name("vtest_short.mp4")
