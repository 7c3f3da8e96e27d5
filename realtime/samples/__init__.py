"""Small media files bundled with the package, so demos and tests need nothing else."""

from pathlib import Path

_HERE = Path(__file__).parent

# The default demo input: 4 s (60 frames at 15 fps, 960x540, H.264) of four synthetic figures
# walking and crossing, with per-frame ground truth in SYNTHETIC_WALK_GT. The demo weights in
# weights/ were trained on figures like these. Made by
#   python -m train.synthetic --out DIR --seed 7 --train 0 --val 0 --aic 0 --unlabeled 0 \
#       --videos 1 --video-size 960x540 --video-fps 15 --video-seconds 4 --video-people 4
# (DIR/videos/walk_000.{mp4,json}).
SYNTHETIC_WALK = _HERE / "synthetic_walk.mp4"
SYNTHETIC_WALK_GT = _HERE / "synthetic_walk.json"

# 5 s (50 frames at 10 fps, 768x576, H.264) of OpenCV's vtest.avi pedestrian video; see LICENSE.
VTEST_SHORT = _HERE / "vtest_short.mp4"
