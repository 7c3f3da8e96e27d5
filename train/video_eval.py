"""End-to-end accuracy of the whole pipeline on a clip with ground truth.

    python app.py video realtime/samples/synthetic_walk.mp4 --out out
    python -m train.video_eval --gt realtime/samples/synthetic_walk.json \
        --poses out/synthetic_walk.jsonl

COCO keypoint AP (pycocotools, OKS) of the JSON Lines that `app.py video` writes, against the
ground truth `train.synthetic.videos.generate_video` writes next to its clip: each frame is one COCO
image (id = frame index), detector, pose network, refinement and temporal fusion all count.
Figures that show too little of themselves to be annotated in a still image are ignore regions,
so finding them is not a false positive and missing them is not a miss.

Beside AP it reports how the poses move, which AP cannot see (see docs/temporal.md):

- jitter: the mean length, in image pixels, of the second difference over frames of each matched
  keypoint's error (estimate minus truth). It is 0 for an error that is constant or drifts
  steadily, and grows with frame-to-frame shake, whatever the person's own motion.
- lag: the time shift, in milliseconds, at which the keypoints' estimated frame-to-frame motion
  best correlates with their true motion (pooled over every matched keypoint, refined to a
  fraction of a frame); positive when the estimates trail the truth.

A ground-truth figure is matched in a frame to the estimate with the highest OKS to it, at least
0.5, greedily over the estimates in descending score order (as COCO matches at OKS 0.5).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from ccm.nms import oks
from ccm.poses import FramePoses, coco_keypoint_results
from train.annotations import read_json
from train.coco_metrics import METRICS, coco_evaluate, format_table, percent_cells

MOTION_METRICS = ("jitter", "lag")
MATCH_MIN_OKS = 0.5
MAX_LAG_FRAMES = 3

COCO_PERSON = {"id": 1, "name": "person", "supercategory": "person"}


def video_ground_truth(path: str | Path | Sequence[str | Path]) -> COCO:
    """`generate_video` ground-truth JSON -> pycocotools COCO with one image per frame.

    Several clips pool into one COCO set: clip c's frame t is image `c * FRAME_STRIDE + t`.
    """
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    images, annotations = [], []
    for clip, path in enumerate(paths):
        _ground_truth_images(path, clip * FRAME_STRIDE, images, annotations)
    dataset = {"images": images, "annotations": annotations, "categories": [COCO_PERSON]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


# Image ids of pooled clips: clips hold fewer frames than this.
FRAME_STRIDE = 1_000_000


def _ground_truth_images(path: Path, offset: int, images: list, annotations: list) -> None:
    gt = read_json(path)
    for frame, people in enumerate(gt["frames"]):
        if frame >= FRAME_STRIDE:
            raise ValueError(f"{path}: more than {FRAME_STRIDE} frames")
        images.append({"id": offset + frame, "width": gt["width"], "height": gt["height"]})
        for person in people:
            if "area" not in person:
                raise ValueError(f"{path}: frame {frame} has no 'area'; regenerate the clip")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": offset + frame,
                    "category_id": 1,
                    "iscrowd": 0 if person["annotated"] else 1,
                    "bbox": person["bbox"],
                    "area": float(person["area"]),
                    "num_keypoints": sum(v > 0 for v in person["keypoints"][2::3]),
                    "keypoints": person["keypoints"],
                }
            )


def read_poses(path: str | Path, num_frames: int) -> list[FramePoses]:
    """`app.py video` JSON Lines -> one FramePoses (NumPy) per frame, in frame order.

    The file must cover frames 0 .. num_frames - 1, each once.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"poses not found: {path}")
    frames: dict[int, FramePoses] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            poses = FramePoses.from_json(line)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: not a JSON Lines pose record ({err})") from None
        frames[poses.frame] = poses
    if set(frames) != set(range(num_frames)):
        raise ValueError(
            f"{path} has poses for {len(frames)} frames, the ground truth for {num_frames}: "
            "was it made from another clip?"
        )
    return [frames[t] for t in range(num_frames)]


def coco_results(frames: Sequence[FramePoses], offset: int = 0) -> list[dict]:
    """Frames of poses -> COCO keypoint results; frame t is image `offset + t`."""
    results = []
    for poses in frames:
        ids = np.full(len(poses), offset + poses.frame)
        results += coco_keypoint_results(ids, np.asarray(poses.keypoints), poses.scores)
    return results


def matched_trajectories(gt: dict, frames: Sequence[FramePoses]) -> tuple[np.ndarray, np.ndarray]:
    """Each ground-truth track's true and matched estimated keypoints over the clip.

    gt: a `generate_video` ground truth; frames: its clip's poses, one per frame. Returns true
    and estimated (T, P, K, 2) image pixels for P = the tracks; true is NaN where the figure is
    not annotated in that frame or the keypoint is not labelled, estimated also where no
    estimate matched the figure.
    """
    tracks = sorted({p["track_id"] for people in gt["frames"] for p in people})
    column = {tid: i for i, tid in enumerate(tracks)}
    k = next((len(p["keypoints"]) // 3 for people in gt["frames"] for p in people), 17)
    shape = (len(gt["frames"]), len(tracks), k, 2)
    true, est = np.full(shape, np.nan), np.full(shape, np.nan)
    for t, (people, poses) in enumerate(zip(gt["frames"], frames, strict=True)):
        people = [p for p in people if p["annotated"]]
        if not people:
            continue
        truth = torch.tensor([p["keypoints"] for p in people], dtype=torch.float64).view(-1, k, 3)
        for person, kpts in zip(people, truth.numpy(), strict=True):
            labelled = kpts[:, 2] > 0
            true[t, column[person["track_id"]], labelled] = kpts[labelled, :2]
        if len(poses) == 0:
            continue
        areas = torch.tensor([float(p["area"]) for p in people], dtype=torch.float64)
        kpts = torch.as_tensor(np.asarray(poses.keypoints), dtype=torch.float64)
        sim = oks(kpts, truth, areas).numpy()  # (N, M)
        taken = np.zeros(len(people), bool)
        for n in np.argsort(-np.asarray(poses.scores), kind="stable"):
            row = np.where(taken, -1.0, sim[n])
            m = int(row.argmax())
            if row[m] < MATCH_MIN_OKS:
                continue
            taken[m] = True
            labelled = truth[m, :, 2].numpy() > 0
            est[t, column[people[m]["track_id"]], labelled] = kpts[n, labelled, :2].numpy()
    return true, est


def second_differences(true: np.ndarray, est: np.ndarray) -> np.ndarray:
    """|e(t+1) - 2 e(t) + e(t-1)| in pixels of the error e = est - true of (T, ...) trajectories
    with x, y last, for every keypoint matched in three frames in a row; a flat array."""
    e = est - true
    d2 = np.linalg.norm(e[2:] - 2 * e[1:-1] + e[:-2], axis=-1)
    return d2[np.isfinite(d2)]


def jitter(true: np.ndarray, est: np.ndarray) -> float:
    """The mean of `second_differences` in pixels (NaN if no keypoint is matched 3 frames)."""
    d2 = second_differences(true, est)
    return float(d2.mean()) if d2.size else float("nan")


def lag_frames(true: np.ndarray, est: np.ndarray, max_lag: float = MAX_LAG_FRAMES) -> float:
    """The time shift d in frames that best aligns estimated with true trajectories.

    true, est: (T, ...) with x, y last, NaN where missing. d minimises the pooled mean squared
    distance |est(t) - true(t - d)|^2, true linearly interpolated between frames (the peak of
    their cross-correlation), searched in steps of 1/20 frame up to max_lag. It is positive when
    the estimates trail the truth. Only keypoints whose truth is known over the whole search
    span around t count, so every shift is scored on the same points. NaN if none is.
    """
    n = len(true)
    span = int(np.ceil(max_lag)) + 1
    t = np.arange(n)
    inside = (t >= span) & (t < n - span)
    # A point counts when its estimate and its truth over t - span .. t + span are all finite.
    known = np.isfinite(true[..., 0])
    window = np.ones_like(known)
    for shift in range(-span, span + 1):
        window &= np.roll(known, shift, axis=0)
    usable = window & inside.reshape(-1, *[1] * (known.ndim - 1)) & np.isfinite(est[..., 0])
    if not usable.any():
        return float("nan")
    shifts = np.arange(-round(20 * max_lag), round(20 * max_lag) + 1) / 20
    cost = []
    for d in shifts:
        lo = int(np.floor(-d))
        frac = -d - lo
        a, b = np.roll(true, -lo, axis=0), np.roll(true, -lo - 1, axis=0)  # true(t+lo), (t+lo+1)
        shifted = (1 - frac) * a + frac * b
        cost.append(np.square(est - shifted).sum(-1)[usable].mean())
    return float(shifts[int(np.argmin(cost))])


def motion_metrics(gt: dict, frames: Sequence[FramePoses]) -> dict[str, float]:
    """{"jitter": pixels, "lag": milliseconds} of a clip's poses against its ground truth."""
    true, est = matched_trajectories(gt, frames)
    return {"jitter": jitter(true, est), "lag": 1000.0 * lag_frames(true, est) / gt["fps"]}


def evaluate_frames(gt_path: str | Path, frames: Sequence[FramePoses]) -> dict[str, float]:
    """COCO keypoint metrics (fractions), jitter (pixels) and lag (ms) of one clip's poses."""
    coco = video_ground_truth(gt_path)
    if len(frames) != len(coco.imgs):
        raise ValueError(f"{len(frames)} frames of poses, the ground truth has {len(coco.imgs)}")
    metrics = coco_evaluate(coco, coco_results(frames))
    return metrics | motion_metrics(read_json(Path(gt_path)), frames)


def evaluate_video(gt_path: str | Path, poses_path: str | Path) -> dict[str, float]:
    """COCO keypoint metrics (fractions), jitter (pixels) and lag (ms) of a pose JSON Lines
    file against a clip's ground truth."""
    gt = read_json(Path(gt_path))
    return evaluate_frames(gt_path, read_poses(poses_path, len(gt["frames"])))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog="python -m train.video_eval",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gt", type=Path, required=True, help="ground-truth JSON of the clip")
    parser.add_argument("--poses", type=Path, required=True, help="JSON Lines from app.py video")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate_video(args.gt, args.poses)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    motion = [f"{metrics['jitter']:.2f}", f"{metrics['lag']:.0f}"]
    print(format_table((*METRICS, "jitter_px", "lag_ms"), [percent_cells(metrics) + motion]))
    return metrics


if __name__ == "__main__":
    main()
