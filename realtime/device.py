"""What every stage asks of the device: which one to run on, and in which precision."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

_cpu_threads: int | None = None  # the thread budget, once PyTorch was left one thread


def cpu_threads() -> int:
    """Threads the networks may use on the CPU: PyTorch's count as the user or the process set it
    (the cores, OMP_NUM_THREADS, a Ray worker's share), also after `leave_cores_to_openvino`."""
    return _cpu_threads or torch.get_num_threads()


def leave_cores_to_openvino() -> None:
    """PyTorch down to one thread, the budget kept for OpenVINO (`cpu_threads`): when OpenVINO
    runs both networks, PyTorch's threads only took the cores from it between their short calls
    (crops, refinement, fusion)."""
    global _cpu_threads
    _cpu_threads = cpu_threads()
    torch.set_num_threads(1)


def resolve_device(device: str | None) -> torch.device:
    """`device`, or the first CUDA GPU when None or "auto" and one exists, else the CPU; a bare
    "cuda" is the first GPU."""
    if device is None or device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda:0")
    return resolved


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_precision(precision: str, device: str | torch.device, half: bool = False) -> str:
    """ "auto" -> what suits the device: bf16 on a CPU with AMX / AVX512-BF16, else fp32 on the
    CPU; on CUDA fp16 with `half`, else fp32. Any other value is returned as it is."""
    if precision != "auto":
        return precision
    if half:
        return "fp16"
    cpu = torch.device(device).type == "cpu"
    return "bf16" if cpu and cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` ("bf16": convolutions and matmuls in bf16, the rest
    in fp32), or a no-op."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
