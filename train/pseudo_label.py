"""Pseudo labels for unlabeled images by a teacher ensemble (paper Sec. 4.2).

1. Person boxes: a detector's output on the unlabeled images, kept above the threshold at which
   the mean number of persons per unlabeled image equals the labelled set's (`pick_threshold`;
   0.9924 for COCO in the paper).
2. Keypoints: every teacher checkpoint runs on the kept boxes (flip test with its own SSP alpha),
   their heatmaps are averaged, decoded and mapped to the image.
3. Labels: keypoints whose fused score exceeds 0.9 become labels (v = 2), the rest stay
   unlabelled (v = 0); persons left with no label are dropped.

The output is a COCO keypoints json (images, annotations, categories) that
`train.samples.load_pseudo_labels` reads.

    python -m train.pseudo_label --teachers a.safetensors b.safetensors \\
        --labelled-ann annotations/person_keypoints_train.json \\
        --unlabeled-images images/unlabeled --unlabeled-list annotations/unlabeled_images.json \\
        --detector yolo11x.pt --out pseudo.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ccm.checkpoint import PoseConfig, load_checkpoint
from ccm.refine import DECODE_METHODS
from ccm.skeleton import COCO_KEYPOINTS, COCO_LIMBS
from train.annotations import Instance, read_json
from train.evaluate import eval_loader, run_model
from train.mine_negatives import add_detector_arguments, detect_persons, load_detection_records

log = logging.getLogger(__name__)

KEYPOINT_THRESHOLD = 0.9  # Sec. 4.2: fused scores above this become labels
PERSON_CATEGORY = 1


def labelled_persons_per_image(ann_file: str | Path) -> float:
    """Mean number of person annotations per image of a COCO json, over all of its images
    (images without people count as 0; crowd regions are not persons)."""
    data = read_json(ann_file)
    if not isinstance(data, dict) or not data.get("images") or "annotations" not in data:
        raise ValueError(f"{ann_file} is not a COCO annotation json with images")
    persons = sum(
        1
        for a in data["annotations"]
        if int(a.get("category_id", PERSON_CATEGORY)) == PERSON_CATEGORY and not a.get("iscrowd")
    )
    return persons / len(data["images"])


def pick_threshold(scores_per_image: Sequence[np.ndarray], target_mean: float) -> float:
    """The detector threshold t at which unlabeled images average `target_mean` persons.

    scores_per_image: the detection scores of each unlabeled image (an empty array for an image
    without detections; it still counts). A box is kept when its score >= t, so the mean count
    mean(t) = #{scores >= t} / #images only changes at the scores themselves.

    Returns the largest score t with mean(t) >= target_mean: the fewest boxes whose mean reaches
    the target. Ties are kept together, so mean(t) may exceed the target. When all detections
    together stay below the target, the lowest score is returned (keep everything), with a
    warning. E.g. scores [0.9, 0.8], [0.8], [] and target 0.5 -> 0.8: at 0.9 the mean is 1/3,
    at 0.8 it is 3/3 (both boxes scoring 0.8 are kept).
    """
    if not target_mean > 0:
        raise ValueError(f"target_mean must be > 0, got {target_mean}")
    if len(scores_per_image) == 0:
        raise ValueError("no unlabeled images")
    arrays = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores_per_image]
    scores = np.sort(np.concatenate(arrays))[::-1]
    if scores.size == 0:
        raise ValueError("no detections on the unlabeled images")
    n = len(arrays)
    # k / n >= target: the same float division that defines the mean, so a target of exactly
    # k / n is met by k boxes (ceil(target * n) would round 2.1 * 10 up to 22).
    reached = np.nonzero(np.arange(1, scores.size + 1) / n >= target_mean)[0]
    if reached.size == 0:
        log.warning(
            "all %d detections average %.4f persons per image, below the target %.4f; "
            "keeping every detection", scores.size, scores.size / n, target_mean,
        )  # fmt: skip
        return float(scores[-1])
    return float(scores[reached[0]])


def scores_by_image(detections: Sequence[Mapping], image_ids: Sequence[int]) -> list[np.ndarray]:
    """Person detection scores grouped per image, in `image_ids` order (empty where none)."""
    grouped: dict[int, list[float]] = {int(i): [] for i in image_ids}
    for det in detections:
        if int(det.get("category_id", PERSON_CATEGORY)) != PERSON_CATEGORY:
            continue
        image_id = int(det["image_id"])
        if image_id not in grouped:
            raise ValueError(f"a detection is on image {image_id}, which is not in the image list")
        grouped[image_id].append(float(det["score"]))
    return [np.asarray(grouped[int(i)]) for i in image_ids]


def check_teachers(configs: Sequence[PoseConfig], names: Sequence[str]) -> None:
    """Refuse an ensemble whose heatmaps cannot be averaged: all teachers need the same input
    size, number of keypoints, keypoint set and heatmap mapping (an "msra" teacher's maps sit
    0.375 heatmap pixels off those of a teacher trained here)."""
    if not configs:
        raise ValueError("need at least one teacher checkpoint")
    first = configs[0]
    for config, name in zip(configs[1:], names[1:], strict=True):
        for field in ("input_size", "num_keypoints", "keypoint_set", "heatmap_mapping"):
            if getattr(config, field) != getattr(first, field):
                raise ValueError(
                    f"teacher {name} has {field.replace('_', ' ')} {getattr(config, field)}, "
                    f"teacher {names[0]} {getattr(first, field)}: an ensemble must share it"
                )


def ensemble_heatmaps(
    teachers: Sequence[tuple[nn.Module, PoseConfig]], images: Tensor, flip: bool
) -> Tensor:
    """Mean heatmaps (N, K, h, w) of the teachers on crops (N, 3, H, W), each flip-fused with
    its own SSP alpha (Eq. (22))."""
    fused = []
    for model, config in teachers:
        heatmaps, flipped = run_model(model, images, flip)
        if flipped is not None:
            heatmaps = config.codec().fuse_flip(heatmaps, flipped)
        fused.append(heatmaps)
    return torch.stack(fused).mean(0)


def detection_instances(
    detections: Sequence[Mapping], images: Mapping[int, Path], threshold: float, num_keypoints: int
) -> list[Instance]:
    """Person detections with score >= threshold -> instances (no keypoints) to label."""
    out = []
    for det in detections:
        score = float(det["score"])
        if int(det.get("category_id", PERSON_CATEGORY)) != PERSON_CATEGORY or score < threshold:
            continue
        if int(det["image_id"]) not in images:
            raise ValueError(f"a detection is on image {det['image_id']}, not in the image list")
        x, y, w, h = (float(v) for v in det["bbox"])
        if w <= 0 or h <= 0:
            continue
        out.append(
            Instance(
                images[int(det["image_id"])],
                int(det["image_id"]),
                (x, y, x + w, y + h),
                np.zeros((num_keypoints, 3)),
                score,
                "detection",
            )  # fmt: skip
        )
    return out


def pseudo_label(
    teachers: Sequence[tuple[nn.Module, PoseConfig]],
    instances: list[Instance],
    flip: bool = True,
    decoder: str = "parabola",
    blur_kernel: int = 0,
    keypoint_threshold: float = KEYPOINT_THRESHOLD,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """COCO keypoint annotations for `instances` from the teachers' fused heatmaps.

    Keypoints whose fused score > keypoint_threshold get v = 2 and their image-pixel location,
    the rest (0, 0, 0); instances with no such keypoint are dropped. Each annotation carries
    the detection's box and score.
    """
    check_teachers([c for _, c in teachers], [c.arch for _, c in teachers])
    config = teachers[0][1]
    codec = config.codec(decoder, blur_kernel)  # the maps arrive flip-fused, per teacher
    for model, _ in teachers:
        model.eval()
    annotations = []
    with torch.inference_mode():
        for batch in eval_loader(instances, config, batch_size):
            heatmaps = ensemble_heatmaps(teachers, batch["image"].to(device), flip)
            center, scale = batch["center"].to(device), batch["scale"].to(device)
            kpts = codec.to_image(heatmaps, center, scale).cpu().double().numpy()
            for index, person in zip(batch["index"].tolist(), kpts, strict=True):
                ann = _annotation(instances[index], person, keypoint_threshold)
                if ann is not None:
                    annotations.append(ann)
    for k, ann in enumerate(annotations):
        ann["id"] = k + 1
    log.info("%d of %d persons kept with pseudo labels", len(annotations), len(instances))
    return annotations


def _annotation(inst: Instance, keypoints: np.ndarray, threshold: float) -> dict | None:
    """One person's (K, 3) x, y, fused score -> a COCO annotation, or None without labels."""
    labelled = keypoints[:, 2] > threshold
    if not labelled.any():
        return None
    flat = np.where(labelled[:, None], np.column_stack((keypoints[:, :2], 2 * labelled)), 0.0)
    x1, y1, x2, y2 = inst.box
    return {
        "image_id": inst.image_id,
        "category_id": PERSON_CATEGORY,
        "iscrowd": 0,
        "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
        "area": round((x2 - x1) * (y2 - y1), 2),
        "num_keypoints": int(labelled.sum()),
        "keypoints": [
            round(float(v), 2) if j % 3 < 2 else int(v) for j, v in enumerate(flat.reshape(-1))
        ],  # fmt: skip
        "score": round(inst.score, 5),
    }


def coco_keypoints_json(images: list[dict], annotations: list[dict]) -> dict:
    """A COCO person-keypoints file: images, annotations and the person category."""
    category = {
        "id": PERSON_CATEGORY,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO_KEYPOINTS),
        "skeleton": [[a + 1, b + 1] for a, b in COCO_LIMBS],
    }
    info = {"description": "pseudo labels (teacher ensemble)"}
    return {"info": info, "images": images, "annotations": annotations, "categories": [category]}


def _image_entries(path: Path) -> list[dict]:
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else data
    if not isinstance(images, list) or not all("id" in im and "file_name" in im for im in images):
        raise ValueError(f"{path} is not a list of COCO image entries (id, file_name)")
    return images


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m train.pseudo_label", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--teachers", type=Path, nargs="+", required=True, help="checkpoints")
    parser.add_argument("--labelled-ann", type=Path, required=True, help="labelled COCO json")
    parser.add_argument("--unlabeled-images", type=Path, required=True, help="image folder")
    parser.add_argument(
        "--unlabeled-list", type=Path, required=True, help="json list of COCO image entries"
    )
    add_detector_arguments(parser)
    parser.add_argument("--threshold", type=float, help="detector threshold (default: picked)")
    parser.add_argument("--keypoint-threshold", type=float, default=KEYPOINT_THRESHOLD)
    parser.add_argument("--no-flip", action="store_true", help="no flip test")
    parser.add_argument("--decoder", default="parabola", choices=DECODE_METHODS)
    parser.add_argument("--blur", type=int, default=0, help="GF kernel size (odd), 0 = off")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True, help="pseudo-label json to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    teachers = [load_checkpoint(path, device) for path in args.teachers]
    check_teachers([c for _, c in teachers], [str(p) for p in args.teachers])
    images = _image_entries(args.unlabeled_list)
    paths = {int(im["id"]): args.unlabeled_images / im["file_name"] for im in images}
    if args.detections is not None:
        detections = load_detection_records(args.detections)
    else:
        detections = detect_persons(args.detector, paths, args.imgsz, args.conf, args.device)

    threshold = args.threshold
    if threshold is None:
        target = labelled_persons_per_image(args.labelled_ann)
        threshold = pick_threshold(scores_by_image(detections, list(paths)), target)
        log.info("%.4f persons per labelled image -> detector threshold %.4f", target, threshold)
    instances = detection_instances(detections, paths, threshold, teachers[0][1].num_keypoints)
    annotations = pseudo_label(
        teachers, instances, not args.no_flip, args.decoder, args.blur, args.keypoint_threshold,
        args.batch_size, device,
    )  # fmt: skip
    out = coco_keypoints_json(images, annotations)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out))
    labels = sum(a["num_keypoints"] for a in annotations)
    print(
        f"threshold {threshold:.4f}: {len(instances)} boxes on {len(images)} images -> "
        f"{len(annotations)} persons, {labels} keypoint labels -> {args.out}"
    )
    return out


if __name__ == "__main__":
    main()
