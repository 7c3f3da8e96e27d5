"""COCO keypoint evaluation of a pose model (paper Sec. 6), on ground-truth or detected boxes.

Prediction is split in two so that one network pass serves many refinement settings:

1. `predict_heatmaps`: crops (`train.samples.TopDownDataset`, no augmentation) -> the model's
   heatmaps on the crops and, for the flip test, on their mirror images (`torch.flip(crops,
   [-1])`).
2. `decode_poses`: heatmaps -> poses in image pixels: flip fusion with the sub-pixel shift (SSP,
   Eq. (22)), Gaussian filtering (GF), sub-pixel decoding (SOA Eq. (10)-(19), DARK, ...), the
   model's heatmap mapping (`PoseConfig.heatmap_mapping`), the heatmap -> image map of
   `ccm.geometry`, and HRNet's rescoring (box score x mean keypoint score).

`suppress_duplicates` then runs OKS-NMS or Soft-NMS fusion (Eq. (20)-(21)) per image, and
`train.coco_metrics.coco_evaluate` scores the COCO keypoint results with pycocotools.

    python -m train.evaluate --checkpoint ckpt.safetensors --data data/synthetic
    python -m train.evaluate --checkpoint ckpt.safetensors --ann person_keypoints_val2017.json \\
        --images val2017 --detections person_detections_val2017.json --decoder dark --blur 11
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ccm.checkpoint import PoseConfig, load_checkpoint
from ccm.nms import NMS_METHODS, oks_nms, rescore, soft_nms_fusion
from ccm.poses import coco_keypoint_results, write_json
from ccm.refine import DECODE_METHODS
from train.annotations import Instance, image_index, load_coco, load_detections
from train.coco_metrics import (
    METRICS,
    coco_evaluate,
    format_metrics_inline,
    format_table,
    percent_cells,
)
from train.samples import TopDownDataset

log = logging.getLogger(__name__)

PERSON_CATEGORY = 1
# Decode this many people at a time: DARK's log-heatmaps and padding copy every map.
_DECODE_CHUNK = 1024


@dataclass(frozen=True)
class EvalConfig:
    """How crops become COCO results.

    flip: flip test (average with the mirrored crop's heatmaps). decoder: one of
    `ccm.refine.DECODE_METHODS` ("argmax", "shift" = 0.25 px, "parabola" / "paraboloid" = SOA,
    "dark"). blur_kernel: odd Gaussian filter size (GF), 0 = off. flip_alpha: SSP shift of the
    flipped heatmaps, Eq. (22); None takes the checkpoint's `PoseConfig.flip_alpha`.
    nms: "softnms" (Eq. (20)-(21)), "oks" (greedy OKS-NMS) or "none"; nms_threshold: OKS above
    which a pose is suppressed. keypoint_threshold: HRNet's rescoring, instance score = box score
    x mean of the keypoint scores above it. min_box_score: detections below it are not evaluated.
    """

    flip: bool = True
    decoder: str = "parabola"
    blur_kernel: int = 0
    flip_alpha: float | None = None
    nms: str = "softnms"
    nms_threshold: float = 0.9
    keypoint_threshold: float = 0.2
    batch_size: int = 32
    min_box_score: float = 0.0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.decoder not in DECODE_METHODS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose from {DECODE_METHODS}")
        if self.blur_kernel != 0 and (self.blur_kernel < 3 or self.blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be 0 (off) or odd >= 3, got {self.blur_kernel}")
        if self.flip_alpha is not None and not 0.0 <= self.flip_alpha <= 1.0:
            raise ValueError(f"flip_alpha must be in [0, 1] or None, got {self.flip_alpha}")
        if self.nms not in NMS_METHODS:
            raise ValueError(f"unknown nms {self.nms!r}; choose from {NMS_METHODS}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1], got {self.nms_threshold}")
        if not 0.0 <= self.keypoint_threshold < 1.0:
            raise ValueError(f"keypoint_threshold must be in [0, 1), got {self.keypoint_threshold}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(
                f"need batch_size >= 1 and num_workers >= 0, got {self.batch_size}, "
                f"{self.num_workers}"
            )


@dataclass(frozen=True)
class PredictedHeatmaps:
    """The network's output for N crops, and where the crops came from.

    heatmaps (N, K, h, w) on the crops; flipped (N, K, h, w) on the mirrored crops as the network
    gave them (not mirrored back), or None without the flip test; center, scale (N, 2) the crop
    regions in image pixels; image_id (N,) int64; box_score (N,) the detector's (1 for ground
    truth). All on one device.
    """

    heatmaps: Tensor
    flipped: Tensor | None
    center: Tensor
    scale: Tensor
    image_id: Tensor
    box_score: Tensor

    def __len__(self) -> int:
        return self.heatmaps.shape[0]

    def slice(self, start: int, stop: int) -> PredictedHeatmaps:
        flipped = None if self.flipped is None else self.flipped[start:stop]
        return PredictedHeatmaps(
            self.heatmaps[start:stop], flipped, self.center[start:stop], self.scale[start:stop],
            self.image_id[start:stop], self.box_score[start:stop],
        )  # fmt: skip

    @staticmethod
    def cat(parts: Sequence[PredictedHeatmaps]) -> PredictedHeatmaps:
        """Concatenate batches (all with or all without flipped maps)."""
        if not parts:
            raise ValueError("no heatmaps to concatenate")
        flipped = None if parts[0].flipped is None else torch.cat([p.flipped for p in parts])
        return PredictedHeatmaps(
            torch.cat([p.heatmaps for p in parts]), flipped,
            torch.cat([p.center for p in parts]), torch.cat([p.scale for p in parts]),
            torch.cat([p.image_id for p in parts]), torch.cat([p.box_score for p in parts]),
        )  # fmt: skip


@dataclass(frozen=True)
class Poses:
    """Decoded people: keypoints (N, K, 3) x, y in image pixels and keypoint score; scores (N,)
    instance scores after rescoring; areas (N,) crop-region areas in image pixels squared (the
    OKS scale HRNet's NMS uses); image_id (N,) int64."""

    keypoints: Tensor
    scores: Tensor
    areas: Tensor
    image_id: Tensor

    @staticmethod
    def cat(parts: Sequence[Poses]) -> Poses:
        return Poses(
            torch.cat([p.keypoints for p in parts]), torch.cat([p.scores for p in parts]),
            torch.cat([p.areas for p in parts]), torch.cat([p.image_id for p in parts]),
        )  # fmt: skip

    def cpu(self) -> Poses:
        return Poses(self.keypoints.cpu(), self.scores.cpu(), self.areas.cpu(), self.image_id.cpu())


def eval_instances(
    ann_file: str | Path,
    image_dir: str | Path,
    detections: str | Path | None = None,
    min_box_score: float = 0.0,
) -> list[Instance]:
    """Ground-truth person boxes of `ann_file`, or the boxes of a COCO detection results file."""
    if detections is None:
        return load_coco(ann_file, image_dir)
    return load_detections(detections, image_index(ann_file, image_dir), min_box_score)


def eval_loader(
    instances: list[Instance], pose_config: PoseConfig, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """Unaugmented crops of `instances` in order, batched."""
    dataset = TopDownDataset(instances, pose_config, augment=None)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def run_model(model: nn.Module, images: Tensor, flip: bool) -> tuple[Tensor, Tensor | None]:
    """One forward pass over crops (N, 3, H, W) and, with `flip`, their mirror images.

    Returns heatmaps (N, K, h, w) and the mirrored crops' heatmaps (N, K, h, w) or None.
    """
    if not flip:
        return model(images).float(), None
    out = model(torch.cat((images, torch.flip(images, [-1])))).float()
    return out[: images.shape[0]], out[images.shape[0] :]


def iter_heatmaps(
    model: nn.Module, loader: DataLoader, flip: bool, device: str | torch.device
) -> Iterator[PredictedHeatmaps]:
    """Run `model` (already on `device`, in eval mode) over the loader's crops, batch by batch."""
    with torch.inference_mode():
        for batch in loader:
            heatmaps, flipped = run_model(model, batch["image"].to(device), flip)
            yield PredictedHeatmaps(
                heatmaps, flipped, batch["center"].to(device), batch["scale"].to(device),
                batch["image_id"].to(device), batch["score"].to(device),
            )  # fmt: skip


def predict_heatmaps(
    model: nn.Module, loader: DataLoader, flip: bool, device: str | torch.device
) -> PredictedHeatmaps:
    """All heatmaps of a loader, kept on the CPU: the cache `decode_poses` reuses per setting.

    Costs 4 K h w bytes per crop, twice with `flip` (COCO val2017 GT boxes at 64x48: 2.6 GB).
    """
    parts = [_to_cpu(p) for p in iter_heatmaps(model, loader, flip, device)]
    if not parts:
        raise ValueError("no crops to predict on (the instance list is empty)")
    return PredictedHeatmaps.cat(parts)


def _to_cpu(p: PredictedHeatmaps) -> PredictedHeatmaps:
    flipped = None if p.flipped is None else p.flipped.cpu()
    return PredictedHeatmaps(
        p.heatmaps.cpu(), flipped, p.center.cpu(), p.scale.cpu(), p.image_id.cpu(),
        p.box_score.cpu(),
    )  # fmt: skip


def decode_poses(
    predicted: PredictedHeatmaps, config: EvalConfig, pose_config: PoseConfig
) -> Poses:
    """Heatmaps -> poses in image pixels (flip fusion + SSP, GF, decoding, rescoring)."""
    if config.flip and predicted.flipped is None:
        raise ValueError("flip test requested but the heatmaps were predicted without it")
    codec = pose_config.codec(config.decoder, config.blur_kernel, config.flip_alpha)
    keypoints = []
    for start in range(0, len(predicted), _DECODE_CHUNK):
        part = predicted.slice(start, start + _DECODE_CHUNK)
        flipped = part.flipped if config.flip else None
        keypoints.append(codec.to_image(part.heatmaps, part.center, part.scale, flipped))
    kpts = torch.cat(keypoints) if keypoints else predicted.heatmaps.new_zeros((0, 0, 3))
    return Poses(
        kpts,
        rescore(predicted.box_score.float(), kpts[..., 2], config.keypoint_threshold),
        predicted.scale.float().prod(-1),
        predicted.image_id,
    )


def suppress_duplicates(poses: Poses, method: str, threshold: float = 0.9) -> Poses:
    """Per image: OKS-NMS ("oks"), Soft-NMS fusion ("softnms", Eq. (20)-(21)) or nothing."""
    if method not in NMS_METHODS:
        raise ValueError(f"unknown nms {method!r}; choose from {NMS_METHODS}")
    if method == "none" or poses.keypoints.shape[0] == 0:
        return poses
    kept: list[Poses] = []
    for image_id in torch.unique(poses.image_id).tolist():
        idx = torch.nonzero(poses.image_id == image_id).squeeze(1)
        kpts, scores, areas = poses.keypoints[idx], poses.scores[idx], poses.areas[idx]
        if method == "oks":
            keep = oks_nms(kpts, scores, areas, threshold)
            fused = kpts[keep]
        else:
            fused, _, keep = soft_nms_fusion(kpts, scores, areas, threshold)
        kept.append(Poses(fused, scores[keep], areas[keep], poses.image_id[idx][keep]))
    return Poses.cat(kept)


def coco_results(poses: Poses) -> list[dict]:
    """Poses -> COCO keypoint results: {"image_id", "category_id", "keypoints", "score"}."""
    return coco_keypoint_results(poses.image_id, poses.keypoints, poses.scores)


def poses_to_results(poses: Poses, config: EvalConfig) -> list[dict]:
    """NMS per `config`, then COCO results."""
    return coco_results(suppress_duplicates(poses, config.nms, config.nms_threshold))


def evaluate_model(
    model: nn.Module,
    pose_config: PoseConfig,
    ann_file: str | Path,
    image_dir: str | Path,
    eval_config: EvalConfig,
    detections: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    results_file: str | Path | None = None,
) -> dict[str, float]:
    """COCO keypoint metrics of `model` (on `device`) on GT boxes or a detection results file.

    Returns {"AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"} as fractions.
    The model is evaluated in eval mode and put back in the mode it came in. With `results_file`
    the COCO results json is written there too.
    """
    instances = eval_instances(ann_file, image_dir, detections, eval_config.min_box_score)
    loader = eval_loader(instances, pose_config, eval_config.batch_size, eval_config.num_workers)
    was_training = model.training
    model.eval()
    try:
        # Decode batch by batch so that only poses, not heatmaps, pile up.
        parts = [
            decode_poses(p, eval_config, pose_config)
            for p in iter_heatmaps(model, loader, eval_config.flip, device)
        ]
    finally:
        model.train(was_training)
    results = []
    if parts:
        results = poses_to_results(Poses.cat(parts).cpu(), eval_config)
    if results_file is not None:
        write_json(results_file, results)
    metrics = coco_evaluate(ann_file, results)
    log.info("%s: %s", Path(ann_file).name, format_metrics_inline(metrics))
    return metrics


# ----------------------------------------------------------------------------- CLI


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, the data to evaluate on, and how to run the network (shared with ablate)."""
    parser.add_argument("--checkpoint", type=Path, required=True, help="pose .safetensors")
    parser.add_argument("--data", type=Path, help="dataset root: annotations/ and images/")
    parser.add_argument("--split", default="val", help="split under --data (default val)")
    parser.add_argument("--ann", type=Path, help="person_keypoints json (instead of --data)")
    parser.add_argument("--images", type=Path, help="image folder (with --ann)")
    parser.add_argument("--detections", type=Path, help="COCO detection results (default: GT)")
    parser.add_argument("--min-box-score", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def resolve_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, Path]:
    """(annotation file, image folder) from --data/--split or --ann/--images."""
    if args.data is not None:
        if args.ann is not None or args.images is not None:
            parser.error("give either --data or --ann and --images, not both")
        return (
            args.data / "annotations" / f"person_keypoints_{args.split}.json",
            args.data / "images" / args.split,
        )
    if args.ann is None or args.images is None:
        parser.error("give --data DIR, or --ann FILE and --images DIR")
    return args.ann, args.images


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate", description=__doc__.split("\n")[0]
    )
    add_data_arguments(parser)
    parser.add_argument("--no-flip", action="store_true", help="no flip test")
    parser.add_argument("--decoder", default="parabola", choices=DECODE_METHODS)
    parser.add_argument("--blur", type=int, default=0, help="GF kernel size (odd), 0 = off")
    parser.add_argument("--ssp-alpha", type=float, help="SSP alpha (default: the checkpoint's)")
    parser.add_argument("--nms", default="softnms", choices=NMS_METHODS)
    parser.add_argument("--nms-threshold", type=float, default=0.9)
    parser.add_argument("--out", type=Path, help="write the COCO keypoint results json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ann_file, image_dir = resolve_data(parser, args)
    try:
        config = EvalConfig(
            flip=not args.no_flip, decoder=args.decoder, blur_kernel=args.blur,
            flip_alpha=args.ssp_alpha, nms=args.nms, nms_threshold=args.nms_threshold,
            batch_size=args.batch_size, min_box_score=args.min_box_score,
            num_workers=args.workers,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    model, pose_config = load_checkpoint(args.checkpoint, args.device)
    metrics = evaluate_model(
        model, pose_config, ann_file, image_dir, config, args.detections, args.device,
        results_file=args.out,
    )  # fmt: skip
    print(format_table(METRICS, [percent_cells(metrics)]))
    return metrics


if __name__ == "__main__":
    main()
