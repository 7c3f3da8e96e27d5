"""The training state behind `--resume`, and the metrics file of a run.

The training state (`train_state.safetensors` in the run directory) is one safetensors file, no
pickle: tensors `model.<key>`, `optimizer.<param index>.<name>`, `rng.torch` and
`rng.cuda.<device>`; the metadata holds JSON for the config, the progress, the optimizer's
param groups, the scheduler and the gradient scaler. Loading it into freshly built objects gives
back bit-identical weights, moments, learning rates and random generators. `metrics.csv` has one
row per epoch (`METRICS_COLUMNS`; stage and epoch count from 1).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from train.run_config import TrainConfig

STATE_FORMAT = "ccm-pose-train/1"
STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.csv"
METRICS_COLUMNS = (
    "stage", "letters", "epoch", "step", "lr", "loss", "loss_main", "loss_aux", "seconds", "val_AP",
)  # fmt: skip


@dataclass(frozen=True)
class Progress:
    """Where a run stands: `stage` (0-based) with `epoch` of its epochs done, `step` optimizer
    steps over the whole run, and the best validation AP so far (None before any)."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    best_ap: float | None = None
    best_at: str = ""

    def advanced(self, **changes) -> Progress:
        return replace(self, **changes)


@dataclass(frozen=True)
class TrainingState:
    """A loaded training-state file: its config and progress, and the tensors and JSON that
    `restore_optimizer` and `restore_rng` put back (`model_tensors` gives the weights)."""

    config: TrainConfig
    progress: Progress
    tensors: dict[str, Tensor]
    metadata: dict[str, str]


def _optimizer_payload(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _scheduler_payload(scheduler: torch.optim.lr_scheduler.MultiStepLR) -> dict:
    state = dict(scheduler.state_dict())
    # A Counter does not survive JSON; keep its elements (milestones with multiplicity).
    state["milestones"] = sorted(state["milestones"].elements())
    return state


def save_training_state(
    path: str | Path,
    config: TrainConfig,
    progress: Progress,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    scaler: torch.amp.GradScaler,
) -> Path:
    """Write everything `--resume` needs to `path`, atomically. `model` is the bare model
    (not its DDP wrapper), so keys match a freshly built one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_json = _optimizer_payload(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    metadata = {
        "format": STATE_FORMAT,
        "config": config.to_json(),
        "progress": json.dumps(asdict(progress)),
        "optimizer": json.dumps(opt_json),
        "scheduler": json.dumps(_scheduler_payload(scheduler)),
        "scaler": json.dumps(scaler.state_dict()),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_training_state(path: str | Path) -> TrainingState:
    """Read a training-state file (a run directory is taken to mean its `STATE_FILE`)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from: {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{path} is not a ccm-pose training state (format {metadata.get('format')!r})"
        )
    config = TrainConfig.from_json(metadata["config"])
    progress = Progress(**json.loads(metadata["progress"]))
    return TrainingState(config, progress, tensors, metadata)


def model_tensors(state: TrainingState) -> dict[str, Tensor]:
    """The model's state dict from a training state."""
    return {k[len("model.") :]: v for k, v in state.tensors.items() if k.startswith("model.")}


def restore_optimizer(
    state: TrainingState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    scaler: torch.amp.GradScaler,
) -> None:
    """Put a training state's optimizer, scheduler and scaler back into freshly built ones of
    the same stage (the model's parameters in the same order)."""
    opt_json = json.loads(state.metadata["optimizer"])
    opt_state: dict[int, dict] = {}
    for key, value in state.tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, entries in opt_json["scalars"].items():
        opt_state.setdefault(int(index), {}).update(entries)
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in opt_json["param_groups"]
    ]
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    sched = json.loads(state.metadata["scheduler"])
    sched["milestones"] = Counter(sched["milestones"])
    scheduler.load_state_dict(sched)
    scaler_state = json.loads(state.metadata["scaler"])
    if scaler_state:  # empty when the run was saved without fp16 loss scaling
        scaler.load_state_dict(scaler_state)


def restore_rng(state: TrainingState) -> None:
    """Put back the global torch generators (CPU, and CUDA when the device count matches)."""
    torch.set_rng_state(state.tensors["rng.torch"])
    cuda = sorted(k for k in state.tensors if k.startswith("rng.cuda."))
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.tensors[f"rng.cuda.{i}"] for i in range(len(cuda))])


def append_metrics(path: str | Path, row: dict) -> None:
    """Add one epoch's row (keys `METRICS_COLUMNS`) to a metrics CSV, with a header if new."""
    path = Path(path)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def trim_metrics(path: str | Path, progress: Progress) -> None:
    """Drop rows of epochs after `progress` (written just before a crash, before the state)."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    done = (progress.stage, progress.epoch)
    keep = [r for r in rows if (int(r["stage"]) - 1, int(r["epoch"])) <= done]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        writer.writerows(keep)
