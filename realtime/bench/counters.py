"""What the benchmark counts besides time: graphs compiled after warm-up, peak device memory and
host syncs per frame.

A compiled backend warms every batch bucket up when it is built, so the number of graphs
torch.compile has made must not grow while frames are timed; a graph made mid-stream is a stall
of seconds. Host syncs are counted on CUDA only, with `torch.cuda.set_sync_debug_mode`, which
warns at every operation that makes the host wait for the device (a copy to the host, `.item()`,
a boolean mask's `nonzero`); on the CPU there is nothing to wait for and the count is None.
`SyncOps` finds, on any device, the operations that would make a CUDA host wait: tests count
them on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operations whose result the host must wait for on CUDA: a value read on the host (`.item()`,
# `bool(t)`), or an output whose shape depends on the data (torchvision's NMS copies its mask).
SYNC_OPS = frozenset(
    {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive",
     "unique_dim", "repeat_interleave", "is_nonzero", "equal", "nms"}
)  # fmt: skip


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far (dynamo's `unique_graphs`)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """The most memory tensors held on `device` since `reset_peak_memory`, in MiB; None on the
    CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


@contextmanager
def host_syncs(device: torch.device) -> Iterator[list[str]]:
    """Collects, in the list it yields, one message per host sync on CUDA while the block runs
    (the list stays empty on the CPU). Syncs of other threads are seen too."""
    found: list[str] = []
    if device.type != "cuda":
        yield found
        return
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found.extend(str(w.message) for w in caught if "synchroniz" in str(w.message).lower())


def syncs_per_frame(device: torch.device, run: Callable[[], int]) -> float | None:
    """Host syncs per frame of `run()` (which processes frames and returns how many); None on
    the CPU."""
    if device.type != "cuda":
        return None
    with host_syncs(device) as found:
        frames = run()
    return len(found) / max(frames, 1)


class SyncOps(TorchDispatchMode):
    """While active (`with SyncOps() as ops:`), records in `ops.found` the name of every
    operation that would make the host wait for a CUDA device, on whatever device it runs:
    `SYNC_OPS`, and indexing with a boolean mask (a `nonzero` inside). A copy to the host is
    not an operation on the CPU; count those apart."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNC_OPS:
            self.found.append(name)
        elif name.startswith("index") and len(args) > 1 and _has_mask(args[1]):
            self.found.append(f"{name}(mask)")
        return func(*args, **(kwargs or {}))


def _has_mask(indices: object) -> bool:
    items = indices if isinstance(indices, list | tuple) else [indices]
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)
