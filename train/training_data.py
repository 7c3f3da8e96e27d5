"""The data a training run reads: the files each stage's sources need, checked up front; the
sources loaded (mining hard negatives on the fly when only detections are given); the loader."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from torch.utils.data import DataLoader, DistributedSampler

from train.annotations import (
    Instance,
    image_index,
    load_aic,
    load_coco,
    load_negatives,
    load_pseudo_labels,
)
from train.ddp import Distributed
from train.mine_negatives import gt_boxes_from_coco, load_detection_records, mine_hard_negatives
from train.run_config import TrainConfig
from train.samples import TopDownDataset


def _source_files(letter: str, data) -> list[tuple[str, str | None, str]]:
    """(what, path, flag) of every file or folder source `letter` reads."""
    coco = [
        ("COCO keypoint annotations", data.coco_ann, "--coco-ann"),
        ("COCO image folder", data.coco_images, "--coco-images"),
    ]
    if letter == "C":
        return coco
    if letter == "A":
        return [
            ("AIC keypoint annotations", data.aic_ann, "--aic-ann"),
            ("AIC image folder", data.aic_images, "--aic-images"),
        ]
    if letter == "H":
        if data.negatives is not None:
            return [("hard-negative detections", data.negatives, "--negatives"), *coco]
        return [
            (
                "person detections to mine hard negatives from",
                data.detections,
                "--negatives or --detections",
            ),
            *coco,
        ]
    if letter == "U":
        return [
            ("pseudo-label annotations", data.pseudo_labels, "--pseudo-labels"),
            ("unlabeled image folder", data.pseudo_images, "--pseudo-images"),
        ]
    raise ValueError(f"unknown source letter {letter!r}")


def check_data(config: TrainConfig) -> None:
    """FileNotFoundError naming the first missing file any stage (or validation) needs."""
    needs = [
        (f"stage {i + 1} ({stage.letters}) needs {letter}", _source_files(letter, config.data))
        for i, stage in enumerate(config.stages)
        for letter in stage.letters
    ]
    if config.val_every:
        d = config.data
        needs.append(
            (
                "validation",
                [
                    ("COCO validation annotations", d.val_ann, "--val-ann"),
                    ("COCO validation image folder", d.val_images, "--val-images"),
                ]
                + (
                    [("validation detections", d.val_detections, "--val-detections")]
                    if d.val_detections
                    else []
                ),
            )
        )
    for purpose, files in needs:
        for what, path, flag in files:
            if path is None:
                raise FileNotFoundError(f"{purpose}: no {what} given ({flag}, or --data DIR)")
            if not Path(path).exists():
                raise FileNotFoundError(f"{purpose}: {what} not found: {path} ({flag})")


def _mined_negatives(data) -> list[Instance]:
    """HNDM (Sec. 4.1) on the fly: detections >= 0.5 touching no annotated person."""
    detections = load_detection_records(data.detections)
    records = mine_hard_negatives(detections, gt_boxes_from_coco(data.coco_ann))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hard_negatives.json"
        path.write_text(json.dumps(records))
        return load_negatives(path, image_index(data.coco_ann, data.coco_images))


def load_sources(config: TrainConfig) -> dict[str, list[Instance]]:
    """The instances of every source letter the schedule names."""
    letters = set("".join(s.letters for s in config.stages))
    d = config.data
    sources: dict[str, list[Instance]] = {}
    if "A" in letters:
        sources["A"] = load_aic(d.aic_ann, d.aic_images)
    if "C" in letters:
        sources["C"] = load_coco(d.coco_ann, d.coco_images)
    if "H" in letters:
        sources["H"] = (
            load_negatives(d.negatives, image_index(d.coco_ann, d.coco_images))
            if d.negatives is not None
            else _mined_negatives(d)
        )
    if "U" in letters:
        sources["U"] = load_pseudo_labels(d.pseudo_labels, d.pseudo_images)
    return sources


def make_loader(
    dataset: TopDownDataset, config: TrainConfig, dist: Distributed, seed: int
) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled batches, this rank's share; the order is a function of (seed, epoch) only."""
    sampler = DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=dist.device.type == "cuda",
        persistent_workers=config.workers > 0,
        # A last batch of one sample would break BatchNorm on pooled (1 x 1) features.
        drop_last=config.batch_size > 1 and len(sampler) % config.batch_size == 1,
    )
    return loader, sampler
