"""Within-frame duplicate suppression compared: OKS-NMS against Soft-NMS fusion (Eq. (20)-(21)).

    python -m train.synthetic --out data/nms --seed 41 --train 0 --val 64 --aic 0 \\
        --unlabeled 0 --videos 0
    python -m train.nms_study detect --data data/nms --out data/nms/detections.json
    python -m train.evaluate --checkpoint weights/demo-ccm-mobilenetv2-128x96.safetensors \\
        --data data/nms --detections data/nms/detections.json --nms none \\
        --out data/nms/poses.json
    python -m train.nms_study table --data data/nms --detections data/nms/detections.json \\
        --poses data/nms/poses.json

`detect` writes the demo detector's raw boxes (a low threshold, so one person gets several
overlapping boxes); `train.evaluate --nms none` keeps the pose of every box; `table` replays each
suppression on those poses at several thresholds and prints AP, then what Eq. (20) averages at
the default threshold: how many kept poses have duplicates, and the OKS against the truth of the
top pose, of its duplicates and of the fused pose.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor

from ccm.geometry import PADDING
from ccm.nms import greedy_suppression, nms_similarity, oks, oks_nms, soft_nms_fusion
from ccm.poses import coco_keypoint_results
from train.coco_metrics import coco_evaluate, format_table

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
ASPECT = 0.75  # the demo model's input width / height: the crop areas train.evaluate uses

Suppress = Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]


def detect(data: Path, out: Path, conf: float = 0.05, iou: float = 0.7) -> int:
    """The demo detector's boxes on data/images/val -> COCO detection results; their count."""
    import cv2

    from realtime.detect.detector import DetectorConfig, PersonDetector

    detector = PersonDetector(
        DetectorConfig(weights="weights/demo-yolo11n-person.pt", conf=conf, iou=iou)
    )
    coco = json.loads((data / "annotations" / "person_keypoints_val.json").read_text())
    results = []
    for image in coco["images"]:
        bgr = cv2.imread(str(data / "images" / "val" / image["file_name"]))
        found = detector(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        boxes, scores = found.boxes.tolist(), found.scores.tolist()
        for (x1, y1, x2, y2), score in zip(boxes, scores, strict=True):
            results.append(
                {"image_id": image["id"], "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                 "score": score}
            )  # fmt: skip
    out.write_text(json.dumps(results))
    return len(results)


def crop_area(bbox: list[float]) -> float:
    """A box (x, y, w, h) grown to ASPECT and padded, as `box_to_center_scale`: pixels^2."""
    w, h = bbox[2], bbox[3]
    return max(w, h * ASPECT) * PADDING * max(h, w / ASPECT) * PADDING


def keep_oks(k: Tensor, s: Tensor, a: Tensor, t: float) -> tuple[Tensor, Tensor]:
    keep = oks_nms(k, s, a, t)
    return k[keep], s[keep]


def keep_soft(k: Tensor, s: Tensor, a: Tensor, t: float) -> tuple[Tensor, Tensor]:
    fused, scores, _ = soft_nms_fusion(k, s, a, t)
    return fused, scores


def keep_soft_scored(k: Tensor, s: Tensor, a: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """Eq. (20) with pose j's keypoint k weighted OKS_ij x score_jk^2 x s_j (s_j its score)."""
    sim = nms_similarity(k, a)
    owner = greedy_suppression(sim, s, t)
    order = torch.sort(s, descending=True, stable=True).indices
    keep = order[owner[order] == order]
    weight = torch.where(owner[None] == keep[:, None], sim[keep], 0.0) * s[None]
    weight[torch.arange(len(keep)), keep] = s[keep]
    per_keypoint = weight[:, :, None] * k[None, :, :, 2] ** 2  # (M, N, K)
    xy = (per_keypoint[..., None] * k[None, :, :, :2]).sum(1) / per_keypoint.sum(1)[..., None]
    return torch.cat([xy, k[keep, :, 2:]], -1), s[keep]


METHODS: dict[str, Suppress] = {
    "no NMS": lambda k, s, a, t: (k, s),
    "OKS-NMS": keep_oks,
    "Soft-NMS, Eq. (20)": keep_soft,
    "Soft-NMS, weights x scores": keep_soft_scored,
}


class Study:
    """Poses of every detection of a COCO split, grouped by image."""

    def __init__(self, data: Path, detections: Path, poses: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = COCO(str(data / "annotations" / "person_keypoints_val.json"))
        results, boxes = json.loads(poses.read_text()), json.loads(detections.read_text())
        if len(results) != len(boxes) or any(
            r["image_id"] != b["image_id"] for r, b in zip(results, boxes, strict=True)
        ):
            raise ValueError("the poses are not one per detection, in order: rerun train.evaluate")
        self.images: dict[int, Tensor] = {}
        for i, r in enumerate(results):
            self.images.setdefault(r["image_id"], []).append(i)
        self.images = {img: torch.tensor(idx) for img, idx in self.images.items()}
        self.k = torch.tensor([r["keypoints"] for r in results], dtype=torch.float64).view(
            len(results), -1, 3
        )
        self.s = torch.tensor([r["score"] for r in results], dtype=torch.float64)
        self.a = torch.tensor([crop_area(b["bbox"]) for b in boxes], dtype=torch.float64)

    def per_image(self) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
        for img, idx in self.images.items():
            yield img, self.k[idx], self.s[idx], self.a[idx]

    def ap(self, method: Suppress, threshold: float) -> float:
        results = []
        for img, k, s, a in self.per_image():
            kept, scores = method(k, s, a, threshold)
            results += coco_keypoint_results([img] * len(kept), kept, scores)
        return 100 * coco_evaluate(self.gt, results)["AP"]

    def fused_sets(self, threshold: float) -> dict[str, float]:
        """What Eq. (20) averages: sets with duplicates, and OKS vs the truth of their poses."""
        kept = with_duplicates = 0
        rows = []
        for img, k, s, a in self.per_image():
            sim = nms_similarity(k, a)
            owner = greedy_suppression(sim, s, threshold)
            plain, _ = keep_soft(k, s, a, threshold)
            scored, _ = keep_soft_scored(k, s, a, threshold)
            order = torch.sort(s, descending=True, stable=True).indices
            keep = order[owner[order] == order].tolist()
            people = [x for x in self.gt.imgToAnns[img] if not x["iscrowd"] and x["num_keypoints"]]
            kept += len(keep)
            for m, j in enumerate(keep):
                others = [i for i in (owner == j).nonzero().flatten().tolist() if i != j]
                with_duplicates += bool(others)
                if not others or not people:
                    continue
                truth = torch.tensor([x["keypoints"] for x in people], dtype=torch.float64)
                truth = truth.view(len(people), -1, 3)
                areas = torch.tensor([float(x["area"]) for x in people], dtype=torch.float64)
                match = oks(k[j : j + 1], truth, areas)[0]
                b = int(match.argmax())
                if match[b] < 0.5:
                    continue
                person, area = truth[b : b + 1], areas[b : b + 1]

                def score(p: Tensor, person: Tensor = person, area: Tensor = area) -> float:
                    return float(oks(p.view(1, -1, 3), person, area))

                rows.append(
                    [score(k[j]), float(np.mean([score(k[i]) for i in others])), score(plain[m]),
                     score(scored[m]), float(sim[j, others].mean()), float(s[others].mean() / s[j])]
                )  # fmt: skip
        mean = np.mean(rows, 0) if rows else np.full(6, np.nan)
        names = ("top", "duplicates", "fused Eq. (20)", "fused x scores", "OKS_ij", "score ratio")
        return {"kept": kept, "with duplicates": with_duplicates, "matched": len(rows)} | dict(
            zip(names, mean.tolist(), strict=True)
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.nms_study",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    find = commands.add_parser("detect", help="the demo detector's raw boxes on data/images/val")
    find.add_argument("--data", type=Path, required=True)
    find.add_argument("--out", type=Path, required=True)
    find.add_argument("--conf", type=float, default=0.05)
    show = commands.add_parser("table", help="replay each suppression on the poses")
    show.add_argument("--data", type=Path, required=True)
    show.add_argument("--detections", type=Path, required=True)
    show.add_argument("--poses", type=Path, required=True, help="train.evaluate --nms none --out")
    args = parser.parse_args(argv)
    if args.command == "detect":
        print(f"wrote {detect(args.data, args.out, args.conf)} boxes to {args.out}")
        return
    study = Study(args.data, args.detections, args.poses)
    rows = [
        [f"{t:g}"] + [f"{study.ap(method, t):.1f}" for method in METHODS.values()]
        for t in THRESHOLDS
    ]
    print(format_table(("threshold", *METHODS), rows))
    sets = study.fused_sets(0.9)
    print("at 0.9: " + ", ".join(f"{k} {v:.3g}" for k, v in sets.items()))


if __name__ == "__main__":
    main()
