"""Hard-negative person detection mining (HNDM, paper Sec. 4.1).

A hard negative is a confident detection (score >= 0.5) that intersects no ground-truth person
box at all: intersection area exactly 0, not merely a low IoU. Training on such boxes with
all-zero target heatmaps (`train.samples.load_negatives`) teaches the pose network to answer false
detections with low responses.

Boxes are COCO [x, y, w, h] in image pixels throughout.

    python -m train.mine_negatives --ann annotations/person_keypoints_train.json \\
        --images images/train --detections detections/person_detections_train.json \\
        --out negatives.json
    python -m train.mine_negatives --ann ... --images ... --detector yolo11x.pt --out negatives.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from train.annotations import read_json

log = logging.getLogger(__name__)

PERSON_CATEGORY = 1


def _boxes(boxes: Sequence[Sequence[float]] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all() or (arr[:, 2:] < 0).any():
        raise ValueError(f"{what} must be finite COCO [x, y, w, h] boxes with w, h >= 0")
    return arr


def intersection_areas(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection area of one [x, y, w, h] box with each of others (M, 4) -> (M,)."""
    iw = np.minimum(box[0] + box[2], others[:, 0] + others[:, 2]) - np.maximum(box[0], others[:, 0])
    ih = np.minimum(box[1] + box[3], others[:, 1] + others[:, 3]) - np.maximum(box[1], others[:, 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def mine_hard_negatives(
    detections: Sequence[Mapping],
    gt_boxes_by_image: Mapping[int, Sequence[Sequence[float]] | np.ndarray],
    score_threshold: float = 0.5,
) -> list[dict]:
    """HNDM: the person detections with score >= `score_threshold` that intersect no GT box.

    detections: COCO detection records {"image_id", "bbox" [x, y, w, h], "score",
    "category_id"}; records of another category than person (1) are ignored.
    gt_boxes_by_image: image_id -> the image's ground-truth person boxes [x, y, w, h] (crowd
    regions and persons without keypoints included); every image the detections refer to must be
    listed, an image without people with no boxes. Boxes that only touch (shared edge, zero
    area) do not intersect. Returns copies of the kept records, in input order.
    """
    gt = {
        int(k): _boxes(v, f"ground-truth boxes of image {k}") for k, v in gt_boxes_by_image.items()
    }
    mined = []
    for i, det in enumerate(detections):
        if int(det.get("category_id", PERSON_CATEGORY)) != PERSON_CATEGORY:
            continue
        image_id = int(det["image_id"])
        if image_id not in gt:
            raise ValueError(
                f"detection {i} is on image {image_id}, which has no ground-truth entry "
                "(list images without people with no boxes)"
            )
        box = _boxes([det["bbox"]], f"detection {i} bbox")[0]
        if float(det["score"]) < score_threshold:
            continue
        if not (intersection_areas(box, gt[image_id]) > 0).any():
            mined.append(dict(det))
    log.info("%d hard negatives of %d detections", len(mined), len(detections))
    return mined


def gt_boxes_from_coco(ann_file: str | Path) -> dict[int, np.ndarray]:
    """image_id -> (M, 4) person boxes [x, y, w, h] of a COCO json, for every image it lists."""
    data = read_json(ann_file)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{ann_file} is not a COCO annotation json (needs images, annotations)")
    boxes: dict[int, list] = {int(im["id"]): [] for im in data["images"]}
    for ann in data["annotations"]:
        if int(ann.get("category_id", PERSON_CATEGORY)) != PERSON_CATEGORY:
            continue
        if int(ann["image_id"]) not in boxes:
            raise ValueError(f"{ann_file}: annotation {ann.get('id')} on unknown image")
        boxes[int(ann["image_id"])].append(ann["bbox"])
    return {k: _boxes(v, f"{ann_file} boxes of image {k}") for k, v in boxes.items()}


def load_detection_records(det_file: str | Path) -> list[dict]:
    """A COCO detection results json (a list of records)."""
    data = read_json(det_file)
    if not isinstance(data, list):
        raise ValueError(f"{det_file} is not a COCO detection results json (expected a list)")
    return data


def detect_persons(
    weights: str | Path,
    images: Mapping[int, Path],
    imgsz: int = 640,
    conf: float = 0.05,
    device: str | None = None,
    batch_size: int = 16,
) -> list[dict]:
    """Run an ultralytics YOLO detector (class 0, person) over image_id -> path.

    `weights` is a local file, or a model .yaml that ultralytics ships (random weights, for tests);
    nothing is downloaded. Returns COCO detection records with boxes [x, y, w, h] in image pixels,
    as ultralytics reports them.
    """
    name = str(weights)
    if not Path(name).is_file() and Path(name).suffix not in {".yaml", ".yml"}:
        raise FileNotFoundError(f"detector weights not found: {name} (nothing is downloaded)")
    missing = [p for p in images.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images not found, first: {missing[0]}")
    from train.detector_training import load_yolo

    model = load_yolo(name)
    ids = list(images)
    records = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        results = model.predict(
            [str(images[i]) for i in chunk], imgsz=imgsz, conf=conf, classes=[0], device=device,
            verbose=False, save=False,
        )  # fmt: skip
        for image_id, result in zip(chunk, results, strict=True):
            xyxy = result.boxes.xyxy.cpu().double().numpy()
            scores = result.boxes.conf.cpu().double().numpy()
            for (x1, y1, x2, y2), s in zip(xyxy, scores, strict=True):
                records.append(
                    {
                        "image_id": int(image_id),
                        "category_id": PERSON_CATEGORY,
                        "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                        "score": round(float(s), 5),
                    }
                )
        log.info("detected %d/%d images", min(start + batch_size, len(ids)), len(ids))
    return records


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """--detections FILE | --detector WEIGHTS [--imgsz --conf --device]; pseudo_label's too."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--detections", type=Path, help="COCO detection results json")
    source.add_argument("--detector", help="ultralytics YOLO weights to run over the images")
    parser.add_argument("--imgsz", type=int, default=640, help="detector input size")
    parser.add_argument("--conf", type=float, default=0.05, help="detector confidence floor")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m train.mine_negatives", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--ann", type=Path, required=True, help="person_keypoints json")
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    add_detector_arguments(parser)
    parser.add_argument("--score-threshold", type=float, default=0.5, help="keep score >= this")
    parser.add_argument("--out", type=Path, required=True, help="negatives json to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    gt = gt_boxes_from_coco(args.ann)
    if args.detections is not None:
        detections = load_detection_records(args.detections)
    else:
        data = read_json(args.ann)
        paths = {int(im["id"]): args.images / im["file_name"] for im in data["images"]}
        detections = detect_persons(args.detector, paths, args.imgsz, args.conf, args.device)
    negatives = mine_hard_negatives(detections, gt, args.score_threshold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(negatives))
    print(f"{len(negatives)} hard negatives of {len(detections)} detections -> {args.out}")
    return negatives


if __name__ == "__main__":
    main()
