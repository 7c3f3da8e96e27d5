"""Turn a training run's checkpoint into a release file whose metrics were measured on held-out
data: the weights (optionally as float16, half the size), the run's config, and the COCO metrics
of exactly the file written, on a val split the run never saw (e.g. synthetic data of another
seed), recorded in the checkpoint's metadata.

    python -m train.synthetic --out data/val-seed2 --seed 2 --train 0 --val 300 --aic 0 \\
        --unlabeled 0 --videos 0
    python -m train.export runs/demo/best.safetensors weights/demo.safetensors \\
        --data data/val-seed2 --half --split-name "synthetic val, seed 2"

It prints the file's SHA-256 and size for the manifest entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from ccm.checkpoint import load_checkpoint, save_checkpoint, sha256_of
from train.coco_metrics import METRICS, format_table, percent_cells
from train.evaluate import EvalConfig, evaluate_model

log = logging.getLogger(__name__)


def export_checkpoint(
    source: Path,
    out: Path,
    ann_file: Path,
    image_dir: Path,
    split_name: str,
    half: bool = False,
    eval_config: EvalConfig | None = None,
) -> dict[str, float | str]:
    """Write `source`'s weights (float16 with `half`) to `out`, evaluated as written on
    `ann_file` / `image_dir` (GT boxes), with the metrics in its config; returns them."""
    if out.resolve() == source.resolve():
        raise ValueError(f"export writes a new file; {out} is the source")
    eval_config = eval_config or EvalConfig()
    model, config = load_checkpoint(source)
    if half:  # the float32 model loading the float16 file gives: measure what ships
        model.half().float()
    metrics = evaluate_model(model, config, ann_file, image_dir, eval_config)
    setting = (
        f"{split_name}: {Path(ann_file).name}, ground-truth boxes, "
        f"{'flip test, ' if eval_config.flip else ''}{eval_config.decoder} decoder"
        f"{f', blur {eval_config.blur_kernel}' if eval_config.blur_kernel else ''}"
    )
    recorded: dict[str, float | str] = {k: round(v, 4) for k, v in metrics.items()}
    recorded["split"] = setting
    recorded["weights"] = "float16" if half else "float32"
    save_checkpoint(
        out, model.half() if half else model, dataclasses.replace(config, metrics=recorded)
    )
    return recorded


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    parser = argparse.ArgumentParser(
        prog="python -m train.export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="a training run's .safetensors")
    parser.add_argument("out", type=Path, help="the release file to write")
    parser.add_argument("--data", type=Path, required=True, help="held-out dataset root")
    parser.add_argument("--split", default="val", help="split under --data (default val)")
    parser.add_argument(
        "--split-name", required=True, help='what the data is, e.g. "synthetic val, seed 2"'
    )
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--blur", type=int, default=0, help="GF kernel for the evaluation")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    ann_file = args.data / "annotations" / f"person_keypoints_{args.split}.json"
    image_dir = args.data / "images" / args.split
    try:
        metrics = export_checkpoint(
            args.source, args.out, ann_file, image_dir, args.split_name, args.half,
            EvalConfig(blur_kernel=args.blur, batch_size=args.batch_size),
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(format_table(METRICS, [percent_cells(metrics)]))  # type: ignore[arg-type]
    size = args.out.stat().st_size / 2**20
    print(f"{args.out}: {size:.1f} MiB, sha256 {sha256_of(args.out)}")
    print(f"measured on {metrics['split']}")
    return metrics


if __name__ == "__main__":
    main()
