"""This process's place in a training run: torchrun's rank and world size, the device, the
process group (DistributedDataParallel)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


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
