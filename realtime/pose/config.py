"""How the pose stage runs: `PoseStageConfig` (backend, device, precision, flip test, decoder,
batch buckets), checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ccm.refine import DECODE_METHODS
from realtime.device import resolve_precision
from realtime.openvino_runtime import openvino_available

BACKENDS = ("auto", "eager", "compile", "tensorrt", "openvino")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class PoseStageConfig:
    """How to run the pose network. `flip_alpha` None takes the checkpoint's SSP alpha.

    `precision`: "fp32", "fp16" (CUDA; weights in fp16), "bf16" (autocast), "int8" (the
    openvino backend: quantized, see `realtime.stream.quantize`) or "auto"
    (`resolve_precision`); `half` is the same as "fp16". `backend` "auto" is `openvino` on the
    CPU (where the package is installed) and `eager` on CUDA (`resolved_backend`)."""

    backend: str = "auto"
    device: str = "cpu"
    half: bool = False
    precision: str = "auto"
    flip_test: bool = True
    flip_alpha: float | None = None
    decoder: str = "parabola"
    blur_kernel: int = 11
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {BACKENDS}")
        if self.decoder not in DECODE_METHODS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose from {DECODE_METHODS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")
        if self.half and self.precision not in ("auto", "fp16"):
            raise ValueError(f"half asks for fp16 but precision is {self.precision}")
        if self.resolved_precision == "fp16" and not str(self.device).startswith("cuda"):
            raise ValueError("fp16 needs a CUDA device")
        if self.backend == "tensorrt" and not str(self.device).startswith("cuda"):
            raise ValueError("the tensorrt backend needs a CUDA device")
        if self.precision == "int8" and self.resolved_backend != "openvino":
            raise ValueError("int8 runs on the openvino backend (the CPU, openvino installed)")
        if self.backend == "openvino" and str(self.device) != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU, not {self.device}")
        buckets = list(self.batch_buckets)
        if not buckets or buckets != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"batch buckets must be increasing and >= 1, got {self.batch_buckets}")

    @property
    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "openvino" if str(self.device) == "cpu" and openvino_available() else "eager"

    @property
    def resolved_precision(self) -> str:
        return resolve_precision(self.precision, self.device, self.half)
