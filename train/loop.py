"""The training loop: the stages of Eq. (7), the loss of Eq. (5)-(6), checkpoints, exact resume.

`train(config)` runs every stage of a `TrainConfig` top to bottom: check that the data each stage
names exists, load the sources, build the model, then per stage a fresh Adam + MultiStepLR and
its epochs (train, validate now and then, write `last.safetensors`, `best.safetensors`, the
training state and a row of `metrics.csv`). A later stage starts from the previous stage's
weights. Under `torchrun` it trains with DistributedDataParallel; only rank 0 writes files.

Exact resume: the data order of an epoch comes from DistributedSampler seeded by (seed, epoch),
the augmentation of a sample from (seed, epoch, index) in `TopDownDataset`, and the state file
holds weights, optimizer moments, scheduler and generators, so a run stopped after an epoch
and resumed ends with the same bits as one that never stopped (on CPU; cuDNN autotuning and
atomics make GPU runs close, not identical).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ccm.checkpoint import PoseConfig, check_state_dict, read_checkpoint, save_checkpoint
from ccm.model import build_model
from train.annotations import (
    Instance,
    image_index,
    load_aic,
    load_coco,
    load_negatives,
    load_pseudo_labels,
)
from train.mine_negatives import gt_boxes_from_coco, load_detection_records, mine_hard_negatives
from train.samples import TopDownDataset, build_stage_dataset
from train.state import (
    METRICS_FILE,
    STATE_FILE,
    Progress,
    StageConfig,
    TrainConfig,
    TrainingState,
    append_metrics,
    load_training_state,
    model_tensors,
    restore_optimizer,
    restore_rng,
    save_training_state,
    trim_metrics,
)

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"


# ----------------------------------------------------------------------------- loss


def heatmap_mse(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Eq. (5) with per-joint target weights, as SimpleBaseline's JointsMSELoss computes it:
    the mean over joints of 0.5 * MSE(pred * w, target * w).

    pred, target (N, K, h, w) heatmaps; weights (N, K), 0 for unlabelled joints. Every joint
    has h * w * N elements, so the mean of per-joint means is the mean over all elements.
    Computed in float32 whatever the dtype of `pred` (AMP).
    """
    if pred.shape != target.shape or weights.shape != pred.shape[:2]:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and weights "
            f"{tuple(weights.shape)} do not fit (N, K, h, w), (N, K, h, w), (N, K)"
        )
    w = weights.float()[:, :, None, None]
    return 0.5 * ((pred.float() - target.float()) * w).square().mean()


def pose_loss(
    main: Tensor, aux: Tensor | None, target: Tensor, weights: Tensor, aux_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. (6): L = L_main + lambda * L_aux, both Eq. (5) against the same target.

    main, aux (N, K, h, w) (aux None for models without an auxiliary decoder); returns
    (L, L_main, L_aux) as float32 scalars.
    """
    loss_main = heatmap_mse(main, target, weights)
    loss_aux = heatmap_mse(aux, target, weights) if aux is not None else torch.zeros_like(loss_main)
    return loss_main + aux_weight * loss_aux, loss_main, loss_aux


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> tuple[Distributed, bool]:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group (NCCL on CUDA,
    gloo on CPU). Returns the process's place and whether this call created the group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    return Distributed(rank, world_size, dev), created


# ----------------------------------------------------------------------------- data


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


# ----------------------------------------------------------------------------- model


def build_training_model(config: TrainConfig) -> nn.Module:
    """The network to train: random heads, ImageNet backbone if given, then `--init` weights."""
    model = build_model(
        config.arch,
        config.num_keypoints,
        config.input_size,
        backbone_weights=config.backbone_weights,
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


# ----------------------------------------------------------------------------- steps


def train_step(
    model: nn.Module,
    batch: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    aux_weight: float,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """One optimizer step on a batch of `TopDownDataset` samples; returns the detached
    (L, L_main, L_aux) of Eq. (6) as a (3,) tensor on the model's device."""
    device = next(model.parameters()).device
    images = batch["image"].to(device, non_blocking=True, memory_format=torch.channels_last)
    target = batch["heatmaps"].to(device, non_blocking=True)
    weights = batch["weights"].to(device, non_blocking=True)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        main, aux = model(images)
    total, loss_main, loss_aux = pose_loss(main, aux, target, weights, aux_weight)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    return torch.stack((total, loss_main, loss_aux)).detach()


@dataclass(frozen=True)
class EpochStats:
    """Mean losses of an epoch over all ranks' batches, its steps and training seconds."""

    loss: float
    loss_main: float
    loss_aux: float
    steps: int
    seconds: float


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    dist: Distributed,
    autocast_dtype: torch.dtype | None,
    description: str,
) -> EpochStats:
    start = time.perf_counter()
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=dist.device)
    steps = 0
    bar = tqdm(loader, desc=description, disable=not dist.is_main, leave=False, dynamic_ncols=True)
    for batch in bar:
        sums += train_step(model, batch, optimizer, scaler, config.aux_weight, autocast_dtype)
        steps += 1
        if dist.is_main and steps % 10 == 0:  # one host sync per 10 steps for the bar
            bar.set_postfix(loss=f"{sums[0].item() / steps:.3g}")
    bar.close()
    totals = torch.cat((sums, torch.tensor([steps], dtype=torch.float64, device=dist.device)))
    if dist.world_size > 1:
        torch_dist.all_reduce(totals)
    count = max(totals[3].item(), 1.0)
    loss, loss_main, loss_aux = (totals[:3] / count).tolist()
    return EpochStats(loss, loss_main, loss_aux, steps, time.perf_counter() - start)


def validate(
    model: nn.Module, pose: PoseConfig, config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """COCO keypoint metrics of the bare model on the validation set, on ground-truth boxes or
    `val_detections` (rank 0 only); the model comes back in the mode it went in."""
    from train.evaluate import EvalConfig, evaluate_model

    d = config.data
    return evaluate_model(
        model, pose, d.val_ann, d.val_images, EvalConfig(), d.val_detections, device
    )


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
