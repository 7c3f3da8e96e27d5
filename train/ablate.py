"""The sub-pixel refinement ablation of the paper's Table 5, for any checkpoint.

One network pass (crops and their mirror images) is cached; every row then only re-decodes:

- four blocks of SOA in {-, 0.25, parabola, paraboloid} (argmax, 0.25 px shift, Eq. (10),
  Eq. (11)-(19)): plain; + Soft-NMS (Eq. (20)-(21)); + SSP (flip test, alpha 1, Eq. (22));
  + GF (Gaussian filtering);
- the all-on block: Soft-NMS + SSP 1 + GF for each SOA;
- the SSP sweep: parabola + Soft-NMS + GF with alpha 0.8, 0.6, 0.4, 0.2, 0.

A "-" under Soft-NMS means greedy OKS-NMS; under SSP, no flip test. In this project's grids the
flipped heatmaps align exactly at alpha 0 (see `ccm.refine.flip_back`), so the sweep reads
differently from the paper's; rows are printed as measured.

    python -m train.ablate --checkpoint ckpt.safetensors --data data/synthetic --markdown t5.md
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pycocotools.coco import COCO

from ccm.checkpoint import PoseConfig, load_checkpoint
from ccm.refine import DECODE_METHODS
from train.coco_metrics import coco_evaluate, format_table, load_coco_gt, percent_cells
from train.evaluate import (
    EvalConfig,
    PredictedHeatmaps,
    add_data_arguments,
    decode_poses,
    eval_instances,
    eval_loader,
    poses_to_results,
    predict_heatmaps,
    resolve_data,
)

log = logging.getLogger(__name__)

TABLE5_DECODERS = ("argmax", "shift", "parabola", "paraboloid")
TABLE5_ALPHAS = (0.8, 0.6, 0.4, 0.2, 0.0)
# (Soft-NMS, SSP alpha or None = no flip test, GF) of each block, in the table's order.
TABLE5_BLOCKS: tuple[tuple[bool, float | None, bool], ...] = (
    (False, None, False),
    (True, None, False),
    (False, 1.0, False),
    (False, None, True),
    (True, 1.0, True),
)
# The paper's column heads.
HEADER = ("SOA", "Soft-NMS", "SSP", "GF", "AP", "AP@.5", "AP@.75", "APM", "APL", "AR", "AR@.5",
          "AR@.75", "ARM", "ARL")  # fmt: skip
SOA_LABELS = {"argmax": "-", "shift": "0.25", "parabola": "parabola", "paraboloid": "paraboloid"}


@dataclass(frozen=True)
class Refinement:
    """One row of Table 5: a decoder (SOA), Soft-NMS or OKS-NMS, SSP alpha (None = no flip test),
    and GF on or off."""

    decoder: str
    soft_nms: bool
    ssp: float | None
    gf: bool

    def eval_config(self, base: EvalConfig, blur_kernel: int) -> EvalConfig:
        return EvalConfig(
            flip=self.ssp is not None, decoder=self.decoder,
            blur_kernel=blur_kernel if self.gf else 0, flip_alpha=self.ssp,
            nms="softnms" if self.soft_nms else "oks", nms_threshold=base.nms_threshold,
            keypoint_threshold=base.keypoint_threshold, batch_size=base.batch_size,
            min_box_score=base.min_box_score, num_workers=base.num_workers,
        )  # fmt: skip

    def cells(self) -> list[str]:
        ssp = "-" if self.ssp is None else f"{self.ssp:g}"
        return [
            SOA_LABELS.get(self.decoder, self.decoder),
            "X" if self.soft_nms else "-",
            ssp,
            "X" if self.gf else "-",
        ]


def table5_rows(
    decoders: Sequence[str] = TABLE5_DECODERS,
    alphas: Sequence[float] = TABLE5_ALPHAS,
    sweep_decoder: str = "parabola",
) -> list[Refinement]:
    """The rows of Table 5: each block for every decoder, then the SSP alpha sweep."""
    unknown = sorted(set(decoders) - set(DECODE_METHODS))
    if unknown or not decoders:
        raise ValueError(f"decoders must be a non-empty subset of {DECODE_METHODS}, got {decoders}")
    rows = [Refinement(d, *block) for block in TABLE5_BLOCKS for d in decoders]
    return rows + [Refinement(sweep_decoder, True, a, True) for a in alphas]


def run_ablation(
    predicted: PredictedHeatmaps,
    gt: COCO,
    pose_config: PoseConfig,
    rows: Sequence[Refinement],
    base: EvalConfig,
    blur_kernel: int = 11,
) -> list[dict[str, float]]:
    """COCO metrics of every row, from one set of cached heatmaps."""
    out = []
    for row in rows:
        config = row.eval_config(base, blur_kernel)
        results = poses_to_results(decode_poses(predicted, config, pose_config), config)
        out.append(coco_evaluate(gt, results))
        log.info("%s: AP %.1f", " ".join(row.cells()), 100 * out[-1]["AP"])
    return out


def table_rows(rows: Sequence[Refinement], metrics: Sequence[dict[str, float]]) -> list[list[str]]:
    return [r.cells() + percent_cells(m) for r, m in zip(rows, metrics, strict=True)]


def markdown_table(rows: Sequence[Refinement], metrics: Sequence[dict[str, float]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows, metrics)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(
        prog="python -m train.ablate", description=__doc__.split("\n")[0]
    )
    add_data_arguments(parser)
    parser.add_argument("--blur", type=int, default=11, help="GF kernel size of the GF rows")
    parser.add_argument("--nms-threshold", type=float, default=0.9)
    parser.add_argument(
        "--decoders", nargs="+", default=list(TABLE5_DECODERS), choices=DECODE_METHODS,
        help="SOA column of the blocks (add dark to compare it)",
    )  # fmt: skip
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ann_file, image_dir = resolve_data(parser, args)
    try:
        base = EvalConfig(
            blur_kernel=args.blur, nms_threshold=args.nms_threshold, batch_size=args.batch_size,
            min_box_score=args.min_box_score, num_workers=args.workers,
        )  # fmt: skip
        rows = table5_rows(args.decoders)
    except ValueError as err:
        parser.error(str(err))

    start = time.perf_counter()
    model, pose_config = load_checkpoint(args.checkpoint, args.device)
    instances = eval_instances(ann_file, image_dir, args.detections, args.min_box_score)
    loader = eval_loader(instances, pose_config, base.batch_size, base.num_workers)
    predicted = predict_heatmaps(model, loader, flip=True, device=args.device)
    log.info("%d crops through the network in %.1f s", len(predicted), time.perf_counter() - start)
    metrics = run_ablation(predicted, load_coco_gt(ann_file), pose_config, rows, base, args.blur)

    print(
        f"{args.checkpoint.name} ({pose_config.arch}, {pose_config.input_size[0]}x"
        f"{pose_config.input_size[1]}) on {ann_file.name}"
        f"{'' if args.detections is None else ' with ' + args.detections.name}, GF {args.blur}"
    )
    print(format_table(HEADER, table_rows(rows, metrics)))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown_table(rows, metrics))
    return metrics


if __name__ == "__main__":
    main()
