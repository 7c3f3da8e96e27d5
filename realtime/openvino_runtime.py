"""The `openvino` backend: either network (pose, detector) run by OpenVINO on the CPU.

    network = OpenVinoNetwork(module, (8, 3, 128, 96), dynamic=(0,), precision="bf16", name="pose")
    heatmaps = network(crops)   # float32 torch tensors in and out, like the module

The torch module is converted once (`openvino.convert_model`, a few seconds) and the result kept
on disk (`~/.cache/ccm-pose/openvino`), keyed by everything it depends on: the weights, the input
shape, the module's class and the torch / OpenVINO versions; later runs read it and only compile
it for this CPU (a fraction of a second). On a two-core AVX512-BF16 CPU it ran the demo pose
network 1.5 to 2.5 times and the demo YOLO11n detector 1.9 times as fast as PyTorch (see
BENCHMARKS.md). Each thread gets its own inference request, so a shared network may be called
from several threads.

`precision="int8"` quantizes the converted network with NNCF's post-training quantization
(`nncf.quantize`: int8 weights and activations, ranges measured on `calibration()`, a list of
typical inputs it calls only when no quantized network is cached) and keeps that too.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from realtime.device import cpu_threads
from realtime.offline import default_config_dir

logger = logging.getLogger(__name__)

# The arithmetic OpenVINO is asked for; an int8 network's remaining float operations run in fp32.
PRECISION_HINTS = {"bf16": "bf16", "fp32": "f32", "int8": "f32"}
CALIBRATION_VERSION = 1  # part of an int8 network's cache key: bump when calibration changes


def openvino_available() -> bool:
    """Whether the openvino package can be imported (a base dependency; missing only where a
    wheel for this platform does not exist)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def shared_core():
    """The process's one `openvino.Core`, never destroyed. Its CPU plugin gives the thread that
    loads it an alternate signal stack and, when destroyed, restores the one it found: cores
    destroyed in another order than made leave a freed stack in place, and the next Python
    signal handler on that thread (Ctrl-C, a child's SIGCHLD) ends the process with SIGSEGV."""
    import openvino

    return openvino.Core()


def cache_key(module: nn.Module, shape: Sequence[int], name: str) -> str:
    """What a converted network depends on: its weights, input shape, class and versions."""
    import openvino

    digest = hashlib.sha256(f"{type(module).__qualname__}|{tuple(shape)}".encode())
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    version = openvino.__version__.split("-")[0]
    return f"{name}-torch{torch.__version__}-openvino{version}-{digest.hexdigest()[:16]}"


class OpenVinoNetwork(nn.Module):
    """A torch module run by OpenVINO on the CPU; called with a float32 tensor, it returns the
    module's (first) output as a float32 tensor of its own.

    `shape` is an example input's; `dynamic` lists the input dimensions that may change between
    calls (0: the batch); `precision` "bf16" lets OpenVINO compute in bf16 where the CPU has it,
    "fp32" keeps fp32, "int8" quantizes with `calibration()` (float32 arrays the network takes).
    """

    def __init__(
        self,
        module: nn.Module,
        shape: Sequence[int],
        dynamic: Sequence[int] = (0,),
        precision: str = "fp32",
        name: str = "network",
        cache_dir: Path | None = None,
        calibration: Callable[[], Sequence[np.ndarray]] | None = None,
    ) -> None:
        super().__init__()
        if precision not in PRECISION_HINTS:
            raise ValueError(f"openvino precision must be one of {sorted(PRECISION_HINTS)}")
        if precision == "int8" and calibration is None:
            raise ValueError("int8 needs calibration inputs to measure activation ranges on")
        self.precision = precision
        cache_dir = Path(cache_dir or default_cache_dir())
        key = cache_key(module, shape, name)
        path = cache_dir / f"{key}.xml"
        core = shared_core()
        if precision == "int8":
            quantized = cache_dir / f"{key}-int8-calibration{CALIBRATION_VERSION}.xml"
            model = _read(core, quantized)
            if model is None:
                model = _quantize(_float_model(core, module, shape, dynamic, name, path),
                                  calibration(), name)  # fmt: skip
                _keep(model, quantized, name)
        else:
            model = _float_model(core, module, shape, dynamic, name, path)
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": cpu_threads(),
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
        }
        self._compiled = core.compile_model(model, "CPU", config)
        self._requests = threading.local()

    def forward(self, x: Tensor) -> Tensor:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        array = x.detach().to(torch.float32).contiguous().numpy()
        request.infer({0: array}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


def _float_model(core, module: nn.Module, shape, dynamic, name: str, path: Path):
    """The module converted to OpenVINO in fp32: read from `path`, or converted and kept."""
    import openvino

    module = _FirstOutput(module).eval()
    model = _read(core, path)
    if model is None:
        logger.info("converting the %s network for OpenVINO (seconds, once)", name)
        # Traced outside inference mode (a detector is first run inside it).
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's notice
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced
            try:
                model = openvino.convert_model(
                    module, example_input=torch.zeros(shape),
                    input=[[-1 if i in dynamic else n for i, n in enumerate(shape)]],
                )  # fmt: skip
            except Exception as err:  # OpenVINO's tracer raises several kinds
                why = str(err).strip().splitlines()[0] if str(err).strip() else type(err)
                raise RuntimeError(
                    f"the {name} network could not be converted for OpenVINO ({why}); "
                    "`--backend eager` runs it on PyTorch"
                ) from err
        _keep(model, path, name)
    return model


class _FirstOutput(nn.Module):
    """A module's first output alone (YOLO returns its raw head outputs beside it)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)
        return out[0] if isinstance(out, tuple | list) else out


def default_cache_dir() -> Path:
    """Where converted networks are kept: $XDG_CACHE_HOME/ccm-pose/openvino (~/.cache/...)."""
    return default_config_dir() / "openvino"


def _quantize(model, samples: Sequence[np.ndarray], name: str):
    """`model` with int8 weights and activations (NNCF post-training quantization), the
    activation ranges measured on `samples`."""
    try:
        import nncf
    except ImportError as err:
        raise RuntimeError(
            "int8 needs NNCF: pip install nncf (or choose --precision auto)"
        ) from err
    if not samples:
        raise ValueError(f"no calibration inputs for the {name} network: nothing to quantize on")
    logger.info("quantizing the %s network to int8 on %d inputs (once)", name, len(samples))
    return nncf.quantize(
        model, nncf.Dataset(list(samples)), subset_size=len(samples),
        preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations: ReLU6 / SiLU outputs
    )  # fmt: skip


def _keep(model, path: Path, name: str) -> None:
    try:
        _save(model, path)
    except OSError as err:  # a read-only home: converted again next time, that is all
        logger.warning("could not keep the converted %s network in %s: %s", name, path.parent, err)


def _read(core, path: Path):
    """The converted model kept at `path`, or None when there is none or it cannot be read (it
    is converted again and the file replaced)."""
    if not path.is_file():
        return None
    try:
        return core.read_model(str(path))
    except RuntimeError as err:
        logger.warning("converting again: %s could not be read: %s", path, err)
        return None


def _save(model, path: Path) -> None:
    """Write the converted model (.xml and .bin) so that a reader never sees half of it."""
    import openvino

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        part = Path(tmp) / path.name
        openvino.save_model(model, str(part), compress_to_fp16=False)
        os.replace(part.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(part, path)  # the .xml last: it is what the cache looks for
