"""The pose stage on the device: batched crops -> network -> flip fusion and sub-pixel decoding.

Three backends run the network: `eager`, `compile` (torch.compile; CUDA graphs on GPU) and
`tensorrt` (torch-tensorrt, fp16, one engine with a dynamic batch profile, cached on disk). The
person count is padded up to a fixed bucket so a compiled graph never sees a new shape, and the
flip-test crops ride in the same batch as the originals. Refinement (Eq. (22) flip fusion, GF,
SOA/DARK, crop -> image mapping) is compiled alongside, so a frame's pose work is two graph calls.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ccm.checkpoint import PoseConfig
from ccm.geometry import box_to_center_scale, grid_to_image, to_pixel_center_heatmap, warp_crops
from ccm.refine import DECODE_METHODS, decode_heatmaps, fuse_flip
from ccm.skeleton import flip_permutation

logger = logging.getLogger(__name__)

BACKENDS = ("eager", "compile", "tensorrt")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EngineConfig:
    """How to run the pose network. `flip_alpha` None takes the checkpoint's SSP alpha."""

    backend: str = "eager"
    device: str = "cpu"
    half: bool = False
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
        if self.half and not str(self.device).startswith("cuda"):
            raise ValueError("fp16 needs a CUDA device")
        if self.backend == "tensorrt" and not str(self.device).startswith("cuda"):
            raise ValueError("the tensorrt backend needs a CUDA device")
        if not self.batch_buckets or list(self.batch_buckets) != sorted(set(self.batch_buckets)):
            raise ValueError(f"batch buckets must be increasing, got {self.batch_buckets}")


@dataclass
class PoseBatch:
    """One frame's pose-stage state. Tensors are padded to `bucket` people; `count` are real."""

    count: int
    bucket: int
    center: Tensor  # (B, 2) image pixels
    scale: Tensor  # (B, 2) image pixels
    crops: Tensor | None = None  # (B or 2B, 3, H, W) normalised
    heatmaps: Tensor | None = None  # (B or 2B, K, h, w)


class PoseEngine:
    """Frame + person boxes -> keypoints (N, K, 3) x, y, score in image pixels, on the device."""

    def __init__(self, model: nn.Module, pose: PoseConfig, config: EngineConfig) -> None:
        self.pose = pose
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = torch.float16 if config.half else torch.float32
        self.flip_alpha = pose.flip_alpha if config.flip_alpha is None else config.flip_alpha
        self.flip_perm = flip_permutation(pose.num_keypoints)
        model = model.eval().to(self.device, self.dtype)
        self._mean = (
            (torch.tensor(IMAGENET_MEAN, device=self.device) * 255).view(1, 3, 1, 1).to(self.dtype)
        )
        self._std = (
            (torch.tensor(IMAGENET_STD, device=self.device) * 255).view(1, 3, 1, 1).to(self.dtype)
        )
        self.network = self._build_network(model)
        self._refine = self._refine_eager
        if config.backend != "eager":
            self._refine = torch.compile(self._refine_eager, dynamic=False)

    def _build_network(self, model: nn.Module):
        backend = self.config.backend
        if backend == "eager":
            return model
        if backend == "compile":
            # CUDA graphs remove per-kernel launch overhead; buckets keep the shapes static.
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            return torch.compile(model, mode=mode, dynamic=False)
        return _tensorrt_module(model, self.pose, self.config, self.crops_per_person)

    @property
    def crops_per_person(self) -> int:
        return 2 if self.config.flip_test else 1

    def bucket_for(self, count: int) -> int:
        """Smallest bucket that holds `count` people (eager runs exactly `count`)."""
        if self.config.backend == "eager":
            return count
        return next(
            (b for b in self.config.batch_buckets if b >= count), self.config.batch_buckets[-1]
        )

    @torch.inference_mode()
    def __call__(self, frame: Tensor, boxes: Tensor) -> Tensor:
        """frame (1, 3, H, W) RGB, uint8 or float in [0, 255]; boxes (N, 4) x1, y1, x2, y2."""
        results = []
        largest = (
            self.config.batch_buckets[-1] if self.config.backend != "eager" else max(len(boxes), 1)
        )
        for start in range(0, max(len(boxes), 1), largest):
            batch = self.crop(frame, boxes[start : start + largest])
            self.infer(batch)
            results.append(self.refine(batch))
        return torch.cat(results) if len(results) > 1 else results[0]

    @torch.inference_mode()
    def crop(self, frame: Tensor, boxes: Tensor) -> PoseBatch:
        """Cut every person (and its mirror image for the flip test) out of the frame at once."""
        count = len(boxes)
        bucket = self.bucket_for(count)
        h, w = self.pose.input_size
        boxes = boxes.to(self.device, torch.float32)
        if bucket > count:  # padding people: a tiny region in the corner, dropped after refine
            pad = boxes.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(bucket - count, 4)
            boxes = torch.cat((boxes, pad))
        center, scale = box_to_center_scale(boxes, aspect_ratio=w / h)
        image = frame.to(self.device, self.dtype)
        index = torch.zeros(bucket, dtype=torch.long, device=self.device)
        crops = warp_crops(image, index, center.to(self.dtype), scale.to(self.dtype), (h, w))
        if self.config.flip_test:
            # A mirrored crop of a region is the crop mirrored: no second warp needed.
            crops = torch.cat((crops, crops.flip(-1)))
        crops = (crops - self._mean) / self._std
        return PoseBatch(count, bucket, center, scale, crops=crops)

    @torch.inference_mode()
    def infer(self, batch: PoseBatch) -> PoseBatch:
        """Run the network on the batch's crops; heatmaps are kept in float32."""
        if batch.bucket == 0:
            k, (hh, hw) = self.pose.num_keypoints, self.pose.heatmap_size
            batch.heatmaps = torch.zeros(0, k, hh, hw, device=self.device)
            return batch
        out = self.network(batch.crops)
        # CUDA-graph outputs are overwritten by the next replay: take a copy before returning.
        batch.heatmaps = out.float().clone() if self.config.backend == "compile" else out.float()
        return batch

    @torch.inference_mode()
    def refine(self, batch: PoseBatch) -> Tensor:
        """Heatmaps -> keypoints (count, K, 3) x, y, score in image pixels."""
        if batch.bucket == 0:
            return torch.zeros(0, self.pose.num_keypoints, 3, device=self.device)
        out = self._refine(batch.heatmaps, batch.center, batch.scale)
        return out[: batch.count]

    def _refine_eager(self, heatmaps: Tensor, center: Tensor, scale: Tensor) -> Tensor:
        if self.config.flip_test:
            half = heatmaps.shape[0] // 2
            heatmaps = fuse_flip(heatmaps[:half], heatmaps[half:], self.flip_perm, self.flip_alpha)
        xy, scores = decode_heatmaps(heatmaps, self.config.decoder, self.config.blur_kernel)
        # An imported model's heatmap map (MMPose / HRNet) -> this project's; identity for ours.
        p = self.pose
        xy = to_pixel_center_heatmap(xy, p.heatmap_mapping, p.input_size, p.heatmap_size)
        xy = grid_to_image(xy, center, scale, self.pose.heatmap_size)
        return torch.cat((xy, scores.unsqueeze(-1)), dim=-1)


def _tensorrt_module(
    model: nn.Module, pose: PoseConfig, config: EngineConfig, per_person: int
) -> nn.Module:
    """Compile the network with torch-tensorrt (fp16, dynamic batch), reusing a cached engine."""
    try:
        import torch_tensorrt
    except ImportError as err:
        raise RuntimeError(
            "the tensorrt backend needs torch-tensorrt: pip install 'ccm-pose[tensorrt]'"
        ) from err
    h, w = pose.input_size
    max_batch = config.batch_buckets[-1] * per_person
    key = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        key.update(name.encode())
        key.update(tensor.detach().float().cpu().numpy().tobytes())
    tag = f"{pose.arch}-{h}x{w}-b{max_batch}-trt{torch_tensorrt.__version__}-{key.hexdigest()[:12]}"
    cache_dir = Path(config.cache_dir or Path.home() / ".cache" / "ccm-pose" / "tensorrt")
    path = cache_dir / f"{tag}.ep"
    if path.is_file():
        logger.info("loading TensorRT engine %s", path)
        return torch.export.load(str(path)).module()
    dtype = torch.float16 if config.half else torch.float32
    spec = torch_tensorrt.Input(
        min_shape=(1, 3, h, w), opt_shape=(min(8 * per_person, max_batch), 3, h, w),
        max_shape=(max_batch, 3, h, w), dtype=dtype,
    )  # fmt: skip
    logger.info("building TensorRT engine %s (minutes, once)", tag)
    trt = torch_tensorrt.compile(
        model, ir="dynamo", inputs=[spec], enabled_precisions={torch.float16, torch.float32}
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(per_person, 3, h, w, device=config.device, dtype=dtype)
    torch_tensorrt.save(trt, str(path), inputs=[example])
    return trt
