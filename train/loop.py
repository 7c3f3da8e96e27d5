"""The training loop: the stages of Eq. (7), the loss of Eq. (5)-(6), checkpoints, exact resume.

`train(config)` runs every stage of a `TrainConfig` top to bottom: check that the data each stage
names exists, load the sources, build the model, then per stage a fresh Adam + MultiStepLR and
its epochs (train, validate now and then, write `last.safetensors`, `best.safetensors`, the
training state and a row of `metrics.csv`). A later stage starts from the previous stage's
weights. Under `torchrun` it trains with DistributedDataParallel; only rank 0 writes files.
One epoch is `train.epoch`, the loss `train.loss`, the data `train.training_data`, the process
group `train.ddp`, the config `train.run_config`, the state files `train.state`.

Exact resume: the data order of an epoch comes from DistributedSampler seeded by (seed, epoch),
the augmentation of a sample from (seed, epoch, index) in `TopDownDataset`, and the state file
holds weights, optimizer moments, scheduler and generators, so a run stopped after an epoch
and resumed ends with the same bits as one that never stopped (on CPU; cuDNN autotuning and
atomics make GPU runs close, not identical).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ccm.checkpoint import PoseConfig, check_state_dict, read_checkpoint, save_checkpoint
from ccm.model import build_model
from train.backbone_init import build_initial_model
from train.ddp import Distributed, setup_distributed
from train.epoch import train_epoch, validate
from train.run_config import StageConfig, TrainConfig
from train.samples import build_stage_dataset
from train.state import (
    METRICS_FILE,
    STATE_FILE,
    Progress,
    TrainingState,
    append_metrics,
    load_training_state,
    model_tensors,
    restore_optimizer,
    restore_rng,
    save_training_state,
    trim_metrics,
)
from train.training_data import check_data, load_sources, make_loader

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"


# ----------------------------------------------------------------------------- model


def build_training_model(config: TrainConfig) -> nn.Module:
    """The network to train: random heads, a backbone from `--backbone-weights` if given (ImageNet
    weights or a pose checkpoint's encoder, `train.backbone_init`), then `--init` weights."""
    model = build_initial_model(
        config.arch, config.num_keypoints, config.input_size, config.backbone_weights
    )
    if config.init is not None:
        init_config, tensors = read_checkpoint(config.init)
        if init_config.num_keypoints != config.num_keypoints:
            raise ValueError(
                f"--init {config.init} predicts {init_config.num_keypoints} keypoints, this run "
                f"{config.num_keypoints}; its heads cannot be reused"
            )
        check_state_dict(model, tensors, f"--init {config.init} ({init_config.arch})")
        model.load_state_dict(tensors)
        log.info("initialised from %s (%s)", config.init, init_config.recipe or init_config.arch)
    return model


def recipe_text(config: TrainConfig, world_size: int) -> str:
    """One line saying how a checkpoint was trained."""
    h, w = config.input_size
    stages = "; ".join(
        f"{s.letters} {s.epochs} ep lr {s.lr:g} x{s.lr_factor:g} at {list(s.lr_steps)}"
        for s in config.stages
    )
    return (
        f"{config.schedule} ({stages}); Adam, batch {config.batch_size}x{world_size}, "
        f"{h}x{w}, sigma {config.sigma:g}, {'unbiased' if config.unbiased else 'biased'} "
        f"targets, aux weight {config.aux_weight:g}, seed {config.seed}"
        + (f", init {Path(config.init).name}" if config.init else "")
        + (f", backbone {Path(config.backbone_weights).name}" if config.backbone_weights else "")
    )


def pose_config(config: TrainConfig, recipe: str, metrics: dict[str, float | str]) -> PoseConfig:
    return PoseConfig(
        arch=config.arch,
        num_keypoints=config.num_keypoints,
        input_size=config.input_size,
        sigma=config.sigma,
        unbiased=config.unbiased,
        recipe=recipe,
        metrics=metrics,
    )


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp`, or None. On CPU only bf16 runs (about 2x faster than
    float32 where the CPU has AMX or AVX512-BF16); fp16 there is ignored with a warning."""
    if mode == "off":
        return None
    if mode == "fp16" and device.type != "cuda":
        log.warning("--amp fp16 ignored on %s: use --amp bf16 off CUDA", device)
        return None
    return torch.bfloat16 if mode == "bf16" else torch.float16


# ----------------------------------------------------------------------------- run


@dataclass
class TrainResult:
    """What a run left behind. `finished` is False when `stop_after` ended it early; `model`
    is the bare trained model (on this rank)."""

    run_dir: Path
    checkpoint: Path | None
    best: Path | None
    metrics: dict[str, float | str]
    finished: bool
    model: nn.Module = field(repr=False)


def train(
    config: TrainConfig, device: str | None = None, stop_after: int | None = None
) -> TrainResult:
    """Run every stage of `config` in a new run folder `config.out_dir`.

    `device`: "cpu", "cuda" or "cuda:N" (default: CUDA if available; under torchrun each rank
    takes cuda:LOCAL_RANK). `stop_after`: return after this many epochs, leaving a state to
    `resume` from (for time-limited jobs).
    """
    dist, created = setup_distributed(device)
    try:
        return _run(config, None, dist, stop_after)
    finally:
        if created:
            torch_dist.destroy_process_group()


def resume(
    run_dir: str | Path,
    device: str | None = None,
    stop_after: int | None = None,
    workers: int | None = None,
) -> TrainResult:
    """Continue the run in `run_dir` from its training state, with the settings it was started
    with (only the number of DataLoader `workers` may change)."""
    state = load_training_state(run_dir)
    config = replace(
        state.config,
        out_dir=str(run_dir),
        workers=state.config.workers if workers is None else workers,
    )
    dist, created = setup_distributed(device)
    try:
        return _run(config, state, dist, stop_after)
    finally:
        if created:
            torch_dist.destroy_process_group()


def _run(
    config: TrainConfig,
    state: TrainingState | None,
    dist: Distributed,
    stop_after: int | None,
) -> TrainResult:
    run_dir = Path(config.out_dir)
    if state is None and (run_dir / STATE_FILE).exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose "
            f"another --out"
        )
    check_data(config)
    sources = load_sources(config)
    datasets = [
        build_stage_dataset(
            sources, s.letters, pose_config(config, "", {}), config.augment, seed=config.seed + i
        )
        for i, s in enumerate(config.stages)
    ]

    torch.manual_seed(config.seed)
    if state is not None:
        model = build_model(config.arch, config.num_keypoints, config.input_size)
        model.load_state_dict(model_tensors(state))
    else:
        model = build_training_model(config)
    # Channels-last runs the convolutions faster on CUDA (AMP) and on CPU (oneDNN).
    model.to(dist.device, memory_format=torch.channels_last)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trained = model
    if dist.world_size > 1:
        device_ids = [dist.device] if dist.device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=device_ids)
    autocast_dtype = amp_dtype(config.amp, dist.device)
    recipe = recipe_text(config, dist.world_size)
    progress = state.progress if state is not None else Progress()
    if dist.is_main:
        _open_run_folder(run_dir, config, state)
        log.info("run %s: %s on %d process(es), %s", run_dir, recipe, dist.world_size, dist.device)

    last = run_dir / LAST_CHECKPOINT if state is not None else None
    metrics: dict[str, float | str] = {}
    epochs_run = 0
    for index, stage in enumerate(config.stages):
        first_epoch = progress.epoch if index == progress.stage else 0
        if index < progress.stage or first_epoch >= stage.epochs:
            continue
        dataset = datasets[index]
        loader, sampler = make_loader(dataset, config, dist, seed=config.seed + index)
        # Each stage of Eq. (7) starts a fresh optimizer and schedule from the current weights.
        optimizer = torch.optim.Adam(model.parameters(), lr=stage.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, stage.lr_steps, stage.lr_factor)
        scaler = torch.amp.GradScaler(dist.device.type, enabled=autocast_dtype == torch.float16)
        if state is not None:
            if first_epoch > 0:
                restore_optimizer(state, optimizer, scheduler, scaler)
            restore_rng(state)
            state = None
        for epoch in range(first_epoch, stage.epochs):
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            name = f"stage {index + 1}/{len(config.stages)} {stage.letters} epoch {epoch + 1}"
            stats = train_epoch(trained, loader, optimizer, scaler, config, dist, autocast_dtype,
                                f"{name}/{stage.epochs}")  # fmt: skip
            scheduler.step()
            progress = progress.advanced(
                stage=index, epoch=epoch + 1, step=progress.step + stats.steps
            )
            metrics = {"loss": stats.loss, "stage": f"{index + 1}/{len(config.stages)} "
                       f"{stage.letters}", "epoch": float(epoch + 1)}  # fmt: skip
            val = _maybe_validate(model, config, dist, stage, epoch, recipe)
            is_best = val is not None and (progress.best_ap is None or val["AP"] > progress.best_ap)
            if val is not None:
                metrics |= {k: float(v) for k, v in val.items()}
                metrics["split"] = f"val {Path(config.data.val_ann).name}"
                log.info("%s: val AP %.4f", name, val["AP"])
            if is_best:
                progress = progress.advanced(best_ap=float(val["AP"]), best_at=name)
            log.info("%s: loss %.6g (main %.6g, aux %.6g), lr %.3g, %.1f s", name, stats.loss,
                     stats.loss_main, stats.loss_aux, lr, stats.seconds)  # fmt: skip
            if dist.is_main:
                append_metrics(run_dir / METRICS_FILE, {
                    "stage": index + 1, "letters": stage.letters, "epoch": epoch + 1,
                    "step": progress.step, "lr": lr, "loss": stats.loss,
                    "loss_main": stats.loss_main, "loss_aux": stats.loss_aux,
                    "seconds": round(stats.seconds, 3), "val_AP": "" if val is None else val["AP"],
                })  # fmt: skip
                pose = pose_config(config, recipe, metrics)
                last = save_checkpoint(run_dir / LAST_CHECKPOINT, model, pose)
                if is_best:
                    save_checkpoint(run_dir / BEST_CHECKPOINT, model, pose)
                if epoch + 1 == stage.epochs:
                    save_checkpoint(run_dir / stage_checkpoint(index, stage), model, pose)
                save_training_state(
                    run_dir / STATE_FILE, config, progress, model, optimizer, scheduler, scaler
                )
            epochs_run += 1
            done = index == len(config.stages) - 1 and epoch + 1 == stage.epochs
            if stop_after is not None and epochs_run >= stop_after and not done:
                log.info("stopped after %d epoch(s); continue with --resume %s", epochs_run,
                         run_dir)  # fmt: skip
                return _result(run_dir, last, progress, metrics, False, model, dist)
    return _result(run_dir, last, progress, metrics, True, model, dist)


def stage_checkpoint(index: int, stage: StageConfig) -> str:
    """File name of the weights a stage ends with, e.g. "stage1_ACHU.safetensors"."""
    return f"stage{index + 1}_{stage.letters}.safetensors"


def _open_run_folder(run_dir: Path, config: TrainConfig, state: TrainingState | None) -> None:
    """A new run: the folder, config.json, an empty metrics log. A resumed one: its metrics log
    cut back to the state it continues from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if state is not None:
        trim_metrics(run_dir / METRICS_FILE, state.progress)
        return
    (run_dir / "config.json").write_text(json.dumps(json.loads(config.to_json()), indent=2))
    (run_dir / METRICS_FILE).unlink(missing_ok=True)


def _maybe_validate(
    model: nn.Module,
    config: TrainConfig,
    dist: Distributed,
    stage: StageConfig,
    epoch: int,
    recipe: str,
) -> dict[str, float] | None:
    """Validate on rank 0 every `val_every` epochs and after a stage's last epoch."""
    due = config.val_every and ((epoch + 1) % config.val_every == 0 or epoch + 1 == stage.epochs)
    if not due:
        return None
    result = None
    if dist.is_main:
        result = validate(model, pose_config(config, recipe, {}), config, dist.device)
    if dist.world_size > 1:
        torch_dist.barrier()
    return result


def _result(
    run_dir: Path,
    last: Path | None,
    progress: Progress,
    metrics: dict[str, float | str],
    finished: bool,
    model: nn.Module,
    dist: Distributed,
) -> TrainResult:
    if dist.world_size > 1:
        torch_dist.barrier()  # rank 0's files are complete when anyone returns
    best = None
    if progress.best_ap is not None:
        best = run_dir / BEST_CHECKPOINT
        metrics = {**metrics, "best_AP": progress.best_ap, "best_at": progress.best_at}
    return TrainResult(run_dir, last, best, metrics, finished, model)
