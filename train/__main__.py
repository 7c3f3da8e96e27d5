"""Train a pose network with the strategies of the CCM paper (Sec. 4, Eq. (7)).

    python -m train --data data/synthetic --arch ccm_mobilenetv2 --schedule AC->C --epochs 30,5
    torchrun --nproc_per_node 4 -m train --coco-ann ... --coco-images ... --schedule C

See docs/training.md for the COCO / AI Challenger recipes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ccm.checkpoint import parse_size
from train.augment import AugmentConfig
from train.loop import BEST_CHECKPOINT, resume, train
from train.run_config import AMP_MODES, DataConfig, TrainConfig, build_stages
from train.state import METRICS_FILE

# Where `--data DIR` finds each source: the layout `python -m train.synthetic` writes, and the
# layout to arrange COCO / AIC in (docs/training.md).
DATA_LAYOUT = {
    "coco_ann": "annotations/person_keypoints_train.json",
    "coco_images": "images/train",
    "aic_ann": "annotations/aic_train.json",
    "aic_images": "images/aic_train",
    "negatives": "detections/hard_negatives_train.json",
    "detections": "detections/person_detections_train.json",
    "pseudo_labels": "annotations/pseudo_labels_unlabeled.json",
    "pseudo_images": "images/unlabeled",
    "val_ann": "annotations/person_keypoints_val.json",
    "val_images": "images/val",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("schedule (Eq. 7)")
    g.add_argument(
        "--schedule",
        default="C",
        help="stages, e.g. C, ACHU, ACHU->CH (A AIC, C COCO, H hard negatives, "
        "U pseudo labels); default C",
    )
    g.add_argument("--epochs", help="epochs per stage, e.g. 210,20 (default 210, fine-tune 20)")
    g.add_argument(
        "--lr", help="Adam learning rate per stage, e.g. 1e-3,1e-4 (default 1e-3, fine-tune 1e-4)"
    )
    g.add_argument(
        "--lr-steps",
        help="epochs after which the lr is multiplied by --lr-factor, per stage, "
        "stages separated by '/', e.g. 170,200/16,19 (default: 170/210 and "
        "200/210 of each stage's epochs)",
    )
    g.add_argument("--lr-factor", type=float, default=0.1)
    g.add_argument("--batch-size", type=int, default=32, help="per process (GPU); default 32")
    g.add_argument(
        "--workers",
        type=int,
        help="DataLoader workers per process (default 4; on --resume, the run's)",
    )
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        type=Path,
        help="a folder in the layout of python -m train.synthetic; explicit paths "
        "below override its files",
    )
    g.add_argument("--coco-ann", help="COCO person_keypoints_train json (C)")
    g.add_argument("--coco-images", help="COCO training image folder")
    g.add_argument("--aic-ann", help="AI Challenger keypoint json (A)")
    g.add_argument("--aic-images", help="AI Challenger image folder")
    g.add_argument("--negatives", help="mined hard negatives, COCO detection json (H)")
    g.add_argument(
        "--detections",
        help="person detections on the COCO training images to mine hard negatives "
        "from when --negatives is not given (H)",
    )
    g.add_argument("--pseudo-labels", help="pseudo-labelled unlabeled images, COCO json (U)")
    g.add_argument("--pseudo-images", help="unlabeled image folder (U)")
    g.add_argument("--val-ann", help="COCO person_keypoints_val json")
    g.add_argument("--val-images", help="COCO validation image folder")
    g.add_argument("--val-detections", help="person detections to validate on (default: GT boxes)")
    g.add_argument(
        "--val-every",
        type=int,
        default=0,
        help="validate every N epochs and after each stage (0: never); keeps best.safetensors",
    )

    g = p.add_argument_group("model and loss")
    g.add_argument(
        "--arch",
        help="e.g. ccm_resnet50, ccm_hrnet_w32, ccm_mobilenetv2, hrnet_w32 "
        "(default: that of --init)",
    )
    g.add_argument("--input-size", type=parse_size, default=(256, 192), help="HxW, default 256x192")
    g.add_argument("--sigma", type=float, default=2.0, help="Gaussian sigma in heatmap pixels")
    g.add_argument(
        "--biased",
        action="store_true",
        help="targets centred on the nearest heatmap pixel (SimpleBaseline) instead "
        "of the exact sub-pixel location (DARK)",
    )
    g.add_argument("--init", help="ccm-pose checkpoint to start from (same keypoint count)")
    g.add_argument(
        "--backbone-weights",
        help="the backbone's starting weights: local ImageNet weights (torchvision / timm), or "
        "a pose checkpoint with the same backbone, e.g. the converted MMPose HRNet-W32 DARK "
        "for ccm_hrnet_w32 (its encoder only; the rest starts fresh)",
    )
    g.add_argument(
        "--aux-weight",
        type=float,
        default=0.5,
        help="lambda of Eq. (6) for the auxiliary decoder's loss (default 0.5)",
    )
    g.add_argument(
        "--amp", choices=AMP_MODES, default="off", help="mixed precision (CUDA; bf16 also on CPU)"
    )
    g.add_argument("--no-augment", action="store_true", help="train on plain crops")

    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, help="run folder (default runs/ARCH_SCHEDULE)")
    g.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run exactly where its last epoch ended; its saved settings are used",
    )
    g.add_argument("--stop-after", type=int, help="return after N epochs (resume later)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    return p


def data_config(args: argparse.Namespace) -> DataConfig:
    """Explicit paths, falling back on the `--data` layout. Without --negatives, a
    hard_negatives_train.json in the layout is used when present, else mined from detections."""
    values = {name: getattr(args, name) for name in DATA_LAYOUT} | {
        "val_detections": args.val_detections
    }
    if args.data is not None:
        if not args.data.is_dir():
            raise FileNotFoundError(f"--data {args.data} is not a folder")
        for name, rel in DATA_LAYOUT.items():
            if values[name] is None:
                values[name] = str(args.data / rel)
        if args.negatives is None and not Path(values["negatives"]).is_file():
            values["negatives"] = None
    return DataConfig(**values)


def train_config(args: argparse.Namespace) -> TrainConfig:
    arch = args.arch
    if arch is None:
        if args.init is None:
            raise ValueError("give --arch (or --init CHECKPOINT to take its arch)")
        from ccm.checkpoint import read_checkpoint

        arch = read_checkpoint(args.init)[0].arch
    stages = build_stages(args.schedule, args.epochs, args.lr, args.lr_steps, args.lr_factor)
    out = args.out or Path("runs") / f"{arch}_{args.schedule.replace('->', '_')}"
    return TrainConfig(
        out_dir=str(out),
        arch=arch,
        stages=stages,
        data=data_config(args),
        input_size=args.input_size,
        sigma=args.sigma,
        unbiased=not args.biased,
        aux_weight=args.aux_weight,
        batch_size=args.batch_size,
        workers=4 if args.workers is None else args.workers,
        seed=args.seed,
        amp=args.amp,
        val_every=args.val_every,
        init=args.init,
        backbone_weights=args.backbone_weights,
        augment=None if args.no_augment else AugmentConfig(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
    )
    try:
        if args.resume is not None:
            ignored = sorted(
                k
                for k, v in vars(args).items()
                if k not in ("resume", "workers", "device", "stop_after")
                and v != parser.get_default(k)
            )
            if ignored:
                logging.getLogger(__name__).warning(
                    "--resume takes the run's saved settings; ignoring %s", ", ".join(ignored)
                )
            result = resume(args.resume, args.device, args.stop_after, args.workers)
        else:
            result = train(train_config(args), args.device, args.stop_after)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    print(f"run: {result.run_dir}  ({'finished' if result.finished else 'stopped; --resume it'})")
    shown = ("stage", "epoch", "loss", "AP", "AP50", "AP75", "AR", "split", "best_AP", "best_at")
    for key, value in ((k, result.metrics[k]) for k in shown if k in result.metrics):
        print(f"  {key:<10} {value:.4g}" if isinstance(value, float) else f"  {key:<10} {value}")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    if result.best is not None:
        print(f"best:       {result.run_dir / BEST_CHECKPOINT}")
    print(f"metrics:    {result.run_dir / METRICS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
