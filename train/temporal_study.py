"""Temporal fusion methods compared on synthetic clips, by replaying cached raw poses.

    python -m train.temporal_study clips --out data/temporal
    python app.py video data/temporal/tune data/temporal/val data/temporal/test \
        --temporal none --out data/temporal/raw
    python -m train.temporal_study table --clips data/temporal --raw data/temporal/raw

`clips` writes the clip set (`CLIP_SET`: every motion of `train.synthetic`, tuning, validation
and held-out test seeds at 10 to 30 fps). `app.py video --temporal none` runs the detector and
pose network once per clip and keeps their raw per-frame poses; `table` then feeds those poses
through each temporal method (`TemporalFusion`, on the CPU) and scores the output with
`train.video_eval`, so comparing methods costs no network run. Per motion and pooled over all
clips of the split it prints keypoint AP and AP75 (pycocotools, the clips pooled into one
evaluation), jitter (pixels, pooled over every matched keypoint) and lag (milliseconds, the mean
of the clips' lags).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccm.poses import FramePoses
from realtime.temporal.fusion import TemporalConfig, TemporalFusion
from train.annotations import read_json
from train.coco_metrics import coco_evaluate, format_table
from train.synthetic.videos import MOTIONS, VideoConfig, generate_video
from train.video_eval import (
    FRAME_STRIDE,
    coco_results,
    lag_frames,
    matched_trajectories,
    read_poses,
    second_differences,
    video_ground_truth,
)

log = logging.getLogger(__name__)

# (seed, fps) per split; each motion gets every pair. "tune" chose the parameters and "val"
# checked them while the method was developed (so both were seen); "test" was run once, after
# the defaults were fixed.
CLIP_SET: dict[str, tuple[tuple[int, int], ...]] = {
    "tune": ((11, 15), (12, 25)),
    "val": ((21, 10), (22, 15), (23, 25), (24, 30)),
    "test": ((31, 10), (32, 15), (33, 25), (34, 30)),
}
CLIP_SIZE = (960, 540)
CLIP_PEOPLE = 4

# The methods of the table: label -> config.
METHODS: dict[str, TemporalConfig] = {
    "none": TemporalConfig(method="none"),
    "oneeuro": TemporalConfig(method="oneeuro"),
    "softnms (old default)": TemporalConfig(method="softnms"),
    "kalman (default)": TemporalConfig(),
}


def clip_frames(fps: int) -> int:
    """Frames per clip: 60 up to 15 fps, 90 above (4 to 6 s, 3 s at 30 fps)."""
    return 60 if fps <= 15 else 90


def make_clips(out: Path) -> list[Path]:
    """Write `CLIP_SET` as OUT/{tune,test}/{motion}_s{seed}_{fps}fps.mp4 + .json; their paths."""
    paths = []
    for split, items in CLIP_SET.items():
        for motion in MOTIONS:
            for seed, fps in items:
                config = VideoConfig(
                    width=CLIP_SIZE[0], height=CLIP_SIZE[1], fps=fps,
                    seconds=clip_frames(fps) / fps, num_people=CLIP_PEOPLE, motion=motion,
                )  # fmt: skip
                path = out / split / f"{motion}_s{seed}_{fps}fps.mp4"
                paths.append(generate_video(path, config, seed, 0).video)
    return paths


@dataclass(frozen=True)
class Clip:
    """One clip's ground truth and the raw poses of `app.py video --temporal none` on it."""

    name: str
    motion: str
    gt_path: Path
    gt: dict
    raw: list[FramePoses]  # torch tensors on the CPU


def load_clips(clips: Path, raw: Path, split: str) -> list[Clip]:
    """The clips of CLIPS/SPLIT with their raw poses from RAW (flat, or mirroring CLIPS)."""
    out = []
    for gt_path in sorted((clips / split).glob("*.json")):
        candidates = [raw / f"{gt_path.stem}.jsonl", raw / split / f"{gt_path.stem}.jsonl"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"no raw poses for {gt_path.stem}; run app.py video ... --temporal none first"
            )
        gt = read_json(gt_path)
        frames = [f.to("cpu") for f in read_poses(found, len(gt["frames"]))]
        out.append(Clip(gt_path.stem, gt.get("motion", "walk"), gt_path, gt, frames))
    if not out:
        raise FileNotFoundError(f"no clips under {clips / split}")
    return out


def replay(config: TemporalConfig, frames: Sequence[FramePoses]) -> list[FramePoses]:
    """One clip's raw poses through a fresh temporal stage; NumPy results."""
    fusion = TemporalFusion(config)
    return [fusion(f).numpy() for f in frames]


def score(clips: Sequence[Clip], config: TemporalConfig) -> dict[str, float]:
    """AP, AP75 (percent, clips pooled), jitter (pixels, pooled) and lag (ms, mean of clips)."""
    coco = video_ground_truth([c.gt_path for c in clips])
    results, shakes, lags = [], [], []
    for i, clip in enumerate(clips):
        fused = replay(config, clip.raw)
        results += coco_results(fused, i * FRAME_STRIDE)
        true, est = matched_trajectories(clip.gt, fused)
        shakes.append(second_differences(true, est))
        lags.append(1000.0 * lag_frames(true, est) / clip.gt["fps"])
    metrics = coco_evaluate(coco, results)
    return {
        "AP": 100 * metrics["AP"],
        "AP75": 100 * metrics["AP75"],
        "jitter": float(np.concatenate(shakes).mean()),
        "lag": float(np.nanmean(lags)),
    }


def table(clips: Sequence[Clip], methods: dict[str, TemporalConfig] = METHODS) -> list[list[str]]:
    """Rows (clips, method, AP, AP75, jitter, jitter / none, lag) per motion, then all pooled."""
    groups = [(m, [c for c in clips if c.motion == m]) for m in MOTIONS]
    groups = [(m, g) for m, g in groups if g] + [("all", list(clips))]
    rows = []
    for name, group in groups:
        base = None
        for label, config in methods.items():
            m = score(group, config)
            base = base or m
            rows.append(
                [
                    f"{name} ({len(group)})", label, f"{m['AP']:.1f}", f"{m['AP75']:.1f}",
                    f"{m['jitter']:.2f}", f"{m['jitter'] / base['jitter']:.2f}",
                    f"{m['lag']:.1f}",
                ]
            )  # fmt: skip
            log.info("%s %s: %s", name, label, m)
    return rows


HEADER = ("clips", "method", "AP", "AP75", "jitter_px", "x none", "lag_ms")


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.temporal_study",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("clips", help="write the clip set")
    make.add_argument("--out", type=Path, required=True)
    show = commands.add_parser("table", help="replay the raw poses through every method")
    show.add_argument("--clips", type=Path, required=True, help="the folder `clips` wrote")
    show.add_argument("--raw", type=Path, required=True, help="app.py video --temporal none output")
    show.add_argument("--split", default="test", choices=tuple(CLIP_SET))
    show.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "clips":
        paths = make_clips(args.out)
        print(f"wrote {len(paths)} clips under {args.out}")
        return
    try:
        clips = load_clips(args.clips, args.raw, args.split)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    rows = table(clips)
    print(markdown(HEADER, rows) if args.markdown else format_table(HEADER, rows))


if __name__ == "__main__":
    main()
