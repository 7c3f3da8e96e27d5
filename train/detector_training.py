"""Train a YOLO person detector with ultralytics on a COCO-format keypoint dataset.

    python -m train.detector_training --data DIR --out runs/detector [--model M] [--epochs 30]
    python -m train.detector_training --data VALDIR --out runs/det-eval --evaluate best.pt

Converts `annotations/person_keypoints_{train,val}.json` of DIR (the layout of `train.synthetic`)
into the YOLO layout (images linked, one label file per image: `0 cx cy w h`, normalised), trains
from the model yaml (random initialisation, nothing downloaded) and writes `best.pt` plus the
validation mAP into OUT. The pose pipeline uses the result as its person detector.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


def yolo_labels(annotations: list[dict], width: int, height: int) -> list[str]:
    """COCO person boxes [x, y, w, h] of one image -> YOLO label lines `0 cx cy w h` in [0, 1]."""
    lines = []
    for ann in annotations:
        if ann.get("iscrowd", 0) or ann.get("category_id", 1) != 1:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(width)), min(y + h, float(height))
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        lines.append(f"0 {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return lines


def convert_split(ann_file: Path, image_dir: Path, out: Path, split: str) -> int:
    """Write OUT/images/SPLIT (links to the images) and OUT/labels/SPLIT; returns the count."""
    data = json.loads(ann_file.read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    images_out, labels_out = out / "images" / split, out / "labels" / split
    images_out.mkdir(parents=True, exist_ok=True)
    labels_out.mkdir(parents=True, exist_ok=True)
    for image in data["images"]:
        source = image_dir / image["file_name"]
        if not source.is_file():
            raise FileNotFoundError(f"image listed in {ann_file} not found: {source}")
        target = images_out / source.name
        if not target.exists():
            try:
                os.symlink(source.resolve(), target)
            except OSError:
                shutil.copy2(source, target)
        lines = yolo_labels(
            by_image.get(int(image["id"]), []), int(image["width"]), int(image["height"])
        )
        (labels_out / f"{source.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return len(data["images"])


def write_dataset(data: Path, out: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """YOLO dataset from `splits` of a COCO-layout folder; returns its yaml. Without a train
    split the yaml names the val images for both (ultralytics wants both keys)."""
    counts = dict.fromkeys(("train", "val"), 0)
    for split in splits:
        ann = data / "annotations" / f"person_keypoints_{split}.json"
        if not ann.is_file():
            raise FileNotFoundError(
                f"{ann} not found (expected the layout of python -m train.synthetic)"
            )
        counts[split] = convert_split(ann, data / "images" / split, out, split)
    yaml = out / "data.yaml"
    train = "train" if "train" in splits else "val"
    yaml.write_text(
        f"path: {out.resolve()}\ntrain: images/{train}\nval: images/val\nnames:\n  0: person\n"
    )
    logger.info("YOLO dataset in %s: %d train, %d val images", out, counts["train"], counts["val"])
    return yaml


def load_yolo(weights: str | Path):
    """An ultralytics YOLO model from a local file or a shipped model yaml, kept offline."""
    # ultralytics reads these when it is imported: no connectivity probe, no pip installs.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    from ultralytics import YOLO

    return YOLO(str(weights))


def train_detector(
    data: Path, out: Path, model: str = "yolo11n.yaml", epochs: int = 30, imgsz: int = 320,
    batch: int = 16, device: str = "cpu", workers: int = 2, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Train, validate, and copy the best weights to OUT/best.pt; returns the val metrics."""
    out.mkdir(parents=True, exist_ok=True)
    yaml = write_dataset(data, out / "dataset")
    net = load_yolo(model)
    net.train(
        data=str(yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=device, workers=workers,
        seed=seed, deterministic=True, pretrained=False, amp=False, plots=False, project=str(out),
        name="run", exist_ok=True, verbose=False,
    )  # fmt: skip
    best = out / "run" / "weights" / "best.pt"
    shutil.copy2(best, out / "best.pt")
    result = _val_metrics(out / "best.pt", yaml, imgsz, batch, device)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def evaluate_detector(
    weights: Path, data: Path, out: Path, imgsz: int = 320, batch: int = 16, device: str = "cpu"
) -> dict[str, float]:
    """Box mAP of a person detector on the val split of a COCO-layout folder, e.g. a synthetic
    val set of another seed than the training data (`python -m train.synthetic --train 0`)."""
    if not Path(weights).is_file():
        raise FileNotFoundError(f"detector weights not found: {weights}")
    yaml = write_dataset(data, out / "dataset", splits=("val",))
    return _val_metrics(weights, yaml, imgsz, batch, device)


def _val_metrics(weights: Path, yaml: Path, imgsz: int, batch: int, device: str) -> dict:
    metrics = load_yolo(weights).val(
        data=str(yaml), imgsz=imgsz, batch=batch, device=device, plots=False, verbose=False,
        project=str(yaml.parent.parent), name="val", exist_ok=True,
    )  # fmt: skip
    return {"mAP50-95": float(metrics.box.map), "mAP50": float(metrics.box.map50)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.detector_training", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="COCO-layout dataset folder")
    parser.add_argument("--out", type=Path, default=Path("runs/detector"), help="output folder")
    parser.add_argument(
        "--model", default="yolo11n.yaml", help="ultralytics model yaml or .pt to start from"
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--imgsz", type=int, default=320, help="training image size (multiple of 32)"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, 0, 0,1, ...")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--evaluate",
        type=Path,
        metavar="WEIGHTS",
        help="do not train: measure the box mAP of WEIGHTS on the val split of --data",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.evaluate:
        try:
            metrics = evaluate_detector(
                args.evaluate, args.data, args.out, args.imgsz, args.batch, args.device
            )
        except FileNotFoundError as err:
            parser.exit(2, f"error: {err}\n")
        print(f"{args.evaluate} on {args.data} val at {args.imgsz}: {_scores(metrics)}")
        return
    metrics = train_detector(
        args.data,
        args.out,
        args.model,
        args.epochs,
        args.imgsz,
        args.batch,
        args.device,
        args.workers,
    )
    print(f"detector: {args.out / 'best.pt'}  {_scores(metrics)}")


def _scores(metrics: dict[str, float]) -> str:
    return f"mAP50-95 {metrics['mAP50-95']:.3f}  mAP50 {metrics['mAP50']:.3f}"


if __name__ == "__main__":
    main()
