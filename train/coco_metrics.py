"""COCO keypoint metrics with pycocotools, and the tables the evaluation and the studies print."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

log = logging.getLogger(__name__)

# COCOeval('keypoints').stats, in order.
METRICS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def load_coco_gt(ann_file: str | Path) -> COCO:
    """pycocotools' COCO for a keypoints json, quietly (it prints while loading)."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        gt = COCO(str(ann_file))
    log.debug(out.getvalue().strip())
    return gt


def coco_evaluate(gt: COCO | str | Path, results: list[dict]) -> dict[str, float]:
    """COCOeval('keypoints') of `results` against `gt` -> {AP, AP50, ..., ARL} as fractions.

    An empty result list scores 0 on every metric (pycocotools cannot load one), with a warning.
    """
    if not isinstance(gt, COCO):
        gt = load_coco_gt(gt)
    if not results:
        log.warning("no keypoint results to evaluate: every metric is 0")
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        # loadRes adds area, bbox and id to each result dict: hand it copies.
        dt = gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(gt, dt, "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug(out.getvalue().strip())
    return {name: float(v) for name, v in zip(METRICS, evaluator.stats, strict=True)}


def format_metrics_inline(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {100 * metrics[k]:.1f}" for k in METRICS)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A right-aligned plain text table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        " ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(lines)


def percent_cells(metrics: dict[str, float]) -> list[str]:
    """Metrics as the paper prints them: percent, one decimal (pycocotools' -1 stays -1)."""
    return [f"{100 * metrics[k]:.1f}" if metrics[k] >= 0 else "-1" for k in METRICS]
