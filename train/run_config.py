"""Run configuration and the stage schedule of Eq. (7).

A run is one or more stages (`StageConfig`): "ACHU->CH" trains on AIC + COCO + hard negatives +
pseudo-labelled images, then fine-tunes on COCO + hard negatives. `TrainConfig` holds everything
that decides the numbers a run produces; it travels inside every training-state file
(`train.state`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from train.augment import AugmentConfig

LETTERS = "ACHU"
# Eq. (7): Train | Phi -> Finetune | Theta.
PHI = ("A", "AC", "ACH", "ACHU", "CHU")
THETA = ("C", "CH")
AMP_MODES = ("off", "bf16", "fp16")

# The HRNet / SimpleBaseline recipe: 210 epochs, lr x0.1 after epochs 170 and 200.
RECIPE_EPOCHS = 210
RECIPE_STEPS = (170, 200)
FINETUNE_EPOCHS = 20
TRAIN_LR = 1e-3
FINETUNE_LR = 1e-4


@dataclass(frozen=True)
class StageConfig:
    """One stage of a schedule: train on the sources `letters` names for `epochs` epochs with
    Adam at `lr`, multiplied by `lr_factor` after each epoch count in `lr_steps`."""

    letters: str
    epochs: int
    lr: float
    lr_steps: tuple[int, ...] = ()
    lr_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"stage {self.letters}: epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0 or not self.lr_factor > 0:
            raise ValueError(f"stage {self.letters}: lr and lr factor must be > 0, got {self}")
        if list(self.lr_steps) != sorted(set(self.lr_steps)) or any(
            not 0 < s < self.epochs for s in self.lr_steps
        ):
            raise ValueError(
                f"stage {self.letters}: lr steps must be increasing epoch counts in "
                f"[1, {self.epochs - 1}], got {list(self.lr_steps)}"
            )


@dataclass(frozen=True)
class DataConfig:
    """Where each source of Eq. (7) lives. None: not given.

    A (AIC): aic_ann + aic_images. C (COCO): coco_ann + coco_images. H (hard negatives): the
    COCO detection json `negatives`, or, without it, the detector output `detections` on the
    COCO training images, from which they are mined (Sec. 4.1); both need the COCO files for
    the image paths. U (pseudo labels, Sec. 4.2): pseudo_labels + pseudo_images. Validation:
    val_ann + val_images, optionally person detections val_detections.
    """

    coco_ann: str | None = None
    coco_images: str | None = None
    aic_ann: str | None = None
    aic_images: str | None = None
    negatives: str | None = None
    detections: str | None = None
    pseudo_labels: str | None = None
    pseudo_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    val_detections: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a run computes (not where or on how many devices)."""

    out_dir: str
    arch: str
    stages: tuple[StageConfig, ...]
    data: DataConfig
    input_size: tuple[int, int] = (256, 192)
    num_keypoints: int = 17
    sigma: float = 2.0
    unbiased: bool = True
    aux_weight: float = 0.5
    batch_size: int = 32
    workers: int = 4
    seed: int = 0
    amp: str = "off"
    val_every: int = 0
    init: str | None = None
    backbone_weights: str | None = None
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a run needs at least one stage")
        check_schedule(tuple(s.letters for s in self.stages))
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.batch_size < 1 or self.workers < 0 or self.val_every < 0:
            raise ValueError(
                f"need batch_size >= 1, workers >= 0, val_every >= 0, got {self.batch_size}, "
                f"{self.workers}, {self.val_every}"
            )
        if self.aux_weight < 0 or self.sigma <= 0:
            raise ValueError(
                f"need aux_weight >= 0 and sigma > 0, got {self.aux_weight}, {self.sigma}"
            )

    @property
    def schedule(self) -> str:
        return "->".join(s.letters for s in self.stages)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        data["stages"] = tuple(
            StageConfig(**{**s, "lr_steps": tuple(s["lr_steps"])}) for s in data["stages"]
        )
        data["data"] = DataConfig(**data["data"])
        data["input_size"] = tuple(data["input_size"])
        if data.get("augment") is not None:
            data["augment"] = AugmentConfig(**data["augment"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"run config has unknown fields {unknown}")
        return cls(**data)


def canonical_letters(text: str) -> str:
    """Stage letters in the order A, C, H, U; ValueError for unknown or repeated letters."""
    letters = text.strip().upper()
    unknown = sorted(set(letters) - set(LETTERS))
    if not letters or unknown:
        raise ValueError(
            f"stage {text!r}: unknown letters {unknown}; use A (AIC), C (COCO), "
            f"H (hard negatives), U (pseudo-labelled unlabeled images)"
        )
    if len(set(letters)) != len(letters):
        raise ValueError(f"stage {text!r} repeats a letter")
    return "".join(c for c in LETTERS if c in letters)


def check_schedule(stages: tuple[str, ...]) -> None:
    """Eq. (7): one stage from Phi or Theta, or Phi -> Theta. ValueError otherwise."""
    if len(stages) == 1 and stages[0] in PHI + THETA:
        return
    if len(stages) == 2 and stages[0] in PHI and stages[1] in THETA:
        return
    raise ValueError(
        f"schedule {'->'.join(stages)!r} is not one of Eq. (7): a single stage from "
        f"{', '.join(sorted(set(PHI + THETA)))}, or TRAIN->FINETUNE with TRAIN in "
        f"{', '.join(PHI)} and FINETUNE in {', '.join(THETA)}"
    )


def parse_schedule(text: str) -> tuple[str, ...]:
    """Schedule text -> stage letters: "ACHU->CH" gives ("ACHU", "CH").

    Letters may come in any order ("CA" is "AC"); ValueError for anything Eq. (7) does not name.
    """
    stages = tuple(canonical_letters(part) for part in text.split("->"))
    check_schedule(stages)
    return stages


def default_lr_steps(epochs: int) -> tuple[int, ...]:
    """The recipe's steps (170 and 200 of 210 epochs) scaled to `epochs`, dropping any that
    would fall on the first or after the last epoch."""
    steps = {round(epochs * s / RECIPE_EPOCHS) for s in RECIPE_STEPS}
    return tuple(sorted(s for s in steps if 0 < s < epochs))


def _per_stage(text: str | None, n: int, name: str, sep: str = ",") -> list[str] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(sep)]
    if len(parts) != n:
        raise ValueError(f"{name} {text!r} gives {len(parts)} values for {n} stage(s)")
    return parts


def build_stages(
    schedule: str,
    epochs: str | None = None,
    lrs: str | None = None,
    lr_steps: str | None = None,
    lr_factor: float = 0.1,
) -> tuple[StageConfig, ...]:
    """Stages from CLI strings: schedule "ACHU->CH", epochs "210,20", lrs "1e-3,1e-4",
    lr_steps "170,200/16,19" (stages separated by "/", an empty part for none).

    Defaults: a training stage 210 epochs at 1e-3, a fine-tune stage (the second) 20 epochs at
    1e-4, steps scaled from the recipe's 170 and 200 of 210 (`default_lr_steps`).
    """
    letters = parse_schedule(schedule)
    n = len(letters)
    epoch_parts = _per_stage(epochs, n, "epochs")
    lr_parts = _per_stage(lrs, n, "lr")
    step_parts = _per_stage(lr_steps, n, "lr steps", sep="/")
    stages = []
    for i, stage_letters in enumerate(letters):
        finetune = i > 0
        try:
            default_epochs = FINETUNE_EPOCHS if finetune else RECIPE_EPOCHS
            stage_epochs = int(epoch_parts[i]) if epoch_parts else default_epochs
            lr = float(lr_parts[i]) if lr_parts else FINETUNE_LR if finetune else TRAIN_LR
            steps = (
                tuple(int(s) for s in step_parts[i].split(",") if s.strip())
                if step_parts
                else default_lr_steps(stage_epochs)
            )
        except ValueError as err:
            raise ValueError(f"stage {i + 1} ({stage_letters}): {err}") from err
        stages.append(StageConfig(stage_letters, stage_epochs, lr, steps, lr_factor))
    return tuple(stages)
