"""The `tensorrt` backend of the pose stage: the network compiled by torch-tensorrt with a dynamic
batch, and the on-disk cache of built engines (`~/.cache/ccm-pose/tensorrt`), keyed by everything
an engine depends on. `realtime.pose.estimator` loads this module only when that backend is
chosen."""

from __future__ import annotations

import hashlib
import inspect
import logging
from pathlib import Path

import torch
from torch import nn

from ccm.checkpoint import PoseConfig
from realtime.pose.config import PoseStageConfig

logger = logging.getLogger(__name__)


def tensorrt_cache_key(
    model: nn.Module, pose: PoseConfig, dtype: torch.dtype, device: str, max_batch: int
) -> str:
    """What a cached TensorRT engine depends on: weights, input size, batch range, precision,
    GPU model and the torch / torch-tensorrt / TensorRT versions."""
    import tensorrt
    import torch_tensorrt

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    gpu = torch.cuda.get_device_name(torch.device(device)).replace(" ", "_")
    h, w = pose.input_size
    return (
        f"{pose.arch}-{h}x{w}-b1-{max_batch}-{str(dtype).removeprefix('torch.')}-{gpu}-"
        f"torch{torch.__version__}-trt{torch_tensorrt.__version__}-tensorrt{tensorrt.__version__}-"
        f"{digest.hexdigest()[:16]}"
    )


def tensorrt_module(
    model: nn.Module, pose: PoseConfig, config: PoseStageConfig, per_person: int
) -> nn.Module:
    """Compile the network with torch-tensorrt (dynamic batch), reusing a cached engine."""
    try:
        import torch_tensorrt
    except ImportError as err:
        raise RuntimeError(
            "the tensorrt backend needs torch-tensorrt: pip install 'ccm-pose[tensorrt]'"
        ) from err
    h, w = pose.input_size
    max_batch = config.batch_buckets[-1] * per_person
    dtype = torch.float16 if config.resolved_precision == "fp16" else torch.float32
    tag = tensorrt_cache_key(model, pose, dtype, config.device, max_batch)
    cache_dir = Path(config.cache_dir or Path.home() / ".cache" / "ccm-pose" / "tensorrt")
    path = cache_dir / f"{tag}.ep"
    if path.is_file():
        logger.info("loading TensorRT engine %s", path)
        return torch.export.load(str(path)).module()
    spec = torch_tensorrt.Input(
        min_shape=(1, 3, h, w), opt_shape=(min(8 * per_person, max_batch), 3, h, w),
        max_shape=(max_batch, 3, h, w), dtype=dtype,
    )  # fmt: skip
    logger.info("building TensorRT engine %s (minutes, once)", tag)
    trt = torch_tensorrt.compile(
        model, ir="dynamo", inputs=[spec], enabled_precisions={dtype}, min_block_size=1
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Saved with its dynamic batch dimension, so the reloaded engine takes every bucket.
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    arg = next(iter(inspect.signature(model.forward).parameters))
    example = torch.zeros(
        min(2 * per_person, max_batch), 3, h, w, device=config.device, dtype=dtype
    )
    part = path.with_suffix(".part")
    torch_tensorrt.save(trt, str(part), arg_inputs=[example], dynamic_shapes={arg: {0: batch}})
    part.replace(path)
    return trt
