"""Batch jobs across processes and machines started by torchrun: who does which input.

    torchrun --nproc-per-node 8 app.py video IN... --out DIR

Every rank expands the same arguments to the same list of inputs (the folders must be visible
to every machine at the same paths), takes its share (`shard`), runs it on its own device
(cuda:LOCAL_RANK when CUDA is there), and the per-rank reports are gathered over gloo
(`gather`) so one merged summary and one exit code come out. An input that fails on one rank
is just a failed input in its report; the other ranks go on.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ranks finish their shares at different times; the gather waits for the slowest one.
GATHER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (RANK, WORLD_SIZE, LOCAL_RANK from torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}" if self.distributed else ""


def ranks_from_env(environ: dict[str, str] | None = None) -> Ranks:
    """Read torchrun's variables; without them, one process."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from err
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"bad torchrun ranks: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return Ranks(rank, world, local)


def shard(items: Sequence[T], sizes: Sequence[float], ranks: Ranks) -> list[T]:
    """This rank's share of `items`, balanced by `sizes` (bytes, say), in the items' order.

    Largest first, each item goes to the rank with the least work so far (ties to the lower
    rank); every rank computes the same assignment from the same lists, with no messages.
    """
    if len(items) != len(sizes):
        raise ValueError(f"{len(items)} items but {len(sizes)} sizes")
    load = [0.0] * ranks.world_size
    owner = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks.world_size), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += max(float(sizes[i]), 1.0)
    return [item for item, r in zip(items, owner, strict=True) if r == ranks.rank]


def rank_device(requested: str, ranks: Ranks) -> str:
    """The device of this rank: with several ranks, "auto" and a bare "cuda" become
    cuda:LOCAL_RANK when CUDA is there (cpu otherwise); an explicit index is kept."""
    if not ranks.distributed or requested not in ("auto", "cuda"):
        return requested
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if ranks.local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK {ranks.local_rank} but this machine has {count} CUDA device(s): "
                f"start at most {count} processes per node (--nproc-per-node)"
            )
        return f"cuda:{ranks.local_rank}"
    return "cpu" if requested == "auto" else requested


def start(ranks: Ranks) -> None:
    """Join the job's gloo group (torchrun set MASTER_ADDR / MASTER_PORT); no-op alone."""
    if ranks.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "gloo", rank=ranks.rank, world_size=ranks.world_size, timeout=GATHER_TIMEOUT
        )


def gather(report: T, ranks: Ranks) -> list[T]:
    """Every rank's `report` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [report]
    gathered: list[T | None] = [None] * ranks.world_size
    torch.distributed.all_gather_object(gathered, report)
    return gathered  # type: ignore[return-value]


def stop(ranks: Ranks) -> None:
    """Leave the group together: torchrun stops the remaining processes as soon as one exits
    with an error code, so none should still be printing when the first one exits."""
    if ranks.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
