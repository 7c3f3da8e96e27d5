"""End-to-end accuracy of the whole pipeline on a clip with ground truth.

    python app.py video realtime/samples/synthetic_walk.mp4 --out out
    python -m train.video_eval --gt realtime/samples/synthetic_walk.json \
        --poses out/synthetic_walk.jsonl

COCO keypoint AP (pycocotools, OKS) of the JSON Lines that `app.py video` writes, against the
ground truth `train.synthetic.generate_video` writes next to its clip: each frame is one COCO
image (id = frame index), detector, pose network, refinement and temporal fusion all count.
Figures that show too little of themselves to be annotated in a still image are ignore regions,
so finding them is not a false positive and missing them is not a miss.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from pycocotools.coco import COCO

from realtime.results import FramePoses
from train.datasets import read_json
from train.evaluate import METRICS, coco_evaluate, format_table, percent_cells

COCO_PERSON = {"id": 1, "name": "person", "supercategory": "person"}


def video_ground_truth(path: str | Path) -> COCO:
    """A `generate_video` ground-truth JSON -> pycocotools COCO with one image per frame."""
    path = Path(path)
    gt = read_json(path)
    images, annotations = [], []
    for frame, people in enumerate(gt["frames"]):
        images.append({"id": frame, "width": gt["width"], "height": gt["height"]})
        for person in people:
            if "area" not in person:
                raise ValueError(f"{path}: frame {frame} has no 'area'; regenerate the clip")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": frame,
                    "category_id": 1,
                    "iscrowd": 0 if person["annotated"] else 1,
                    "bbox": person["bbox"],
                    "area": float(person["area"]),
                    "num_keypoints": sum(v > 0 for v in person["keypoints"][2::3]),
                    "keypoints": person["keypoints"],
                }
            )
    dataset = {"images": images, "annotations": annotations, "categories": [COCO_PERSON]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def read_results(path: str | Path, num_frames: int) -> list[dict]:
    """`app.py video` JSON Lines -> COCO keypoint results; the file must cover every frame."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"poses not found: {path}")
    results, frames = [], set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            poses = FramePoses.from_json(line)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: not a JSON Lines pose record ({err})") from None
        frames.add(poses.frame)
        for kpts, score in zip(poses.keypoints, poses.scores, strict=True):
            results.append(
                {
                    "image_id": poses.frame,
                    "category_id": 1,
                    "keypoints": kpts.reshape(-1).tolist(),
                    "score": float(score),
                }
            )
    if frames != set(range(num_frames)):
        raise ValueError(
            f"{path} has poses for {len(frames)} frames, the ground truth for {num_frames}: "
            "was it made from another clip?"
        )
    return results


def evaluate_video(gt_path: str | Path, poses_path: str | Path) -> dict[str, float]:
    """COCO keypoint metrics (fractions) of a pose JSON Lines file against a clip's ground truth."""
    gt = video_ground_truth(gt_path)
    return coco_evaluate(gt, read_results(poses_path, len(gt.imgs)))


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
    print(format_table(METRICS, [percent_cells(metrics)]))
    return metrics


if __name__ == "__main__":
    main()
