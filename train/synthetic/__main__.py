"""Synthetic COCO-keypoints data: scenes of articulated figures (see `train.synthetic.figures`).

    python -m train.synthetic --out data/synthetic --train 64 --val 32

The dataset's layout is `train.synthetic.writers.generate_dataset`'s; clips are
`train.synthetic.videos.generate_video`'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from train.synthetic.scenes import SceneConfig
from train.synthetic.videos import MOTIONS, VideoConfig
from train.synthetic.writers import SyntheticConfig, generate_dataset


def _size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset root to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=64, help="train images")
    parser.add_argument("--val", type=int, default=32, help="val images")
    parser.add_argument("--aic", type=int, default=32, help="AI Challenger format images")
    parser.add_argument("--unlabeled", type=int, default=32, help="unlabeled images")
    parser.add_argument("--max-people", type=int, default=4, help="figures per image (0..N)")
    parser.add_argument(
        "--distractors", type=int, default=0, metavar="N",
        help="person-like props (lamp posts, dress forms, coat stands, shadows, legs) per still "
        "image, 0..N, never annotated; 0 writes what earlier versions wrote",
    )  # fmt: skip
    parser.add_argument("--min-size", type=_size, default=(256, 192), help="smallest image WxH")
    parser.add_argument("--max-size", type=_size, default=(640, 480), help="largest image WxH")
    parser.add_argument("--videos", type=int, default=1, help="clips")
    parser.add_argument("--video-size", type=_size, default=(320, 240), help="e.g. 1920x1080")
    parser.add_argument("--video-fps", type=int, default=25)
    parser.add_argument("--video-seconds", type=float, default=2.0)
    parser.add_argument("--video-people", type=int, default=2, help=">= 2: the first two cross")
    parser.add_argument(
        "--video-motion", choices=MOTIONS, default="walk", help="what the figures do (VideoConfig)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        scene = SceneConfig(
            min_size=args.min_size[::-1], max_size=args.max_size[::-1],
            max_people=args.max_people, max_distractors=args.distractors,
        )  # fmt: skip
        video = VideoConfig(
            width=args.video_size[0], height=args.video_size[1], fps=args.video_fps,
            seconds=args.video_seconds, num_people=args.video_people, motion=args.video_motion,
        )  # fmt: skip
        cfg = SyntheticConfig(
            seed=args.seed, num_train=args.train, num_val=args.val, num_aic=args.aic,
            num_unlabeled=args.unlabeled, num_videos=args.videos, scene=scene, video=video,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    paths = generate_dataset(args.out, cfg)
    persons = sum(
        len(json.loads(p.read_text())["annotations"])
        for p in (paths.train_annotations, paths.val_annotations)
    )
    print(
        f"wrote {cfg.num_train} train + {cfg.num_val} val images ({persons} persons), "
        f"{cfg.num_aic} AIC, {cfg.num_unlabeled} unlabeled, {cfg.num_videos} video(s) "
        f"to {paths.root} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
