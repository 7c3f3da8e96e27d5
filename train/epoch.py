"""One epoch of training: the optimizer step on a batch (the loss of Eq. (5)-(6), autocast,
gradient scaling), the epoch over a loader with its losses averaged over all ranks, and
validation with COCO keypoint metrics. `train.loop` runs these stage by stage."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ccm.checkpoint import PoseConfig
from train.ddp import Distributed
from train.loss import pose_loss
from train.run_config import TrainConfig


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
