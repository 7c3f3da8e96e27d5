"""The pose stage: person boxes on device frames -> keypoints in image pixels, in one call.

    estimator = PoseEstimator(model, pose_config, PoseStageConfig(backend="compile", device="cuda"))
    keypoints = estimator(images, boxes, batch_index)   # (N, K, 3) x, y, score in image pixels

`PoseEstimator` owns everything between the detector and the poses: batched crops (and their
mirror images for the flip test, in the same batch), the network on one of four backends, and
the one `ccm.codec.HeatmapCodec` chain from heatmaps to image keypoints. The backends are `eager`,
`compile` (torch.compile; CUDA graphs on GPU), `tensorrt` (`realtime.pose.tensorrt`: one
engine with a dynamic batch profile, cached on disk) and `openvino` (`realtime.openvino_runtime`,
the CPU's default). People are run in chunks of at most the
largest bucket, each padded up to a fixed bucket, so a compiled graph never meets a new shape;
compiled backends warm every bucket up when they are built, so nothing compiles mid-stream.

Crop geometry is float32 whatever the network's precision: the sampling grid is built and the
frame sampled in float32, and only the normalised crops are cast (fp16 centres would put crops
0.5-1 px off at 1080p). On the CPU, uint8 frames are cut by OpenCV's bilinear warp instead, with
the same affine maps: converting whole frames to float for `grid_sample` cost more than the crops.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from ccm.checkpoint import PoseConfig
from ccm.fold import fold_batch_norms
from ccm.geometry import box_to_center_scale, grid_to_image_matrix, warp_crops
from realtime.device import autocast, cpu_has_bf16
from realtime.pose.config import PoseStageConfig
from realtime.pose.cpu_fusion import FusedConv, fuse_activations

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Lap = Callable[[str], None]  # a stage timer's `lap(stage)`


class _Decoder(nn.Module):
    """The codec chain as a module, so the compiled backends trace it as one graph."""

    def __init__(self, codec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, heatmaps: Tensor, center: Tensor, scale: Tensor, flip: bool) -> Tensor:
        flipped = None
        if flip:
            half = heatmaps.shape[0] // 2
            heatmaps, flipped = heatmaps[:half], heatmaps[half:]
        return self.codec.to_image(heatmaps, center, scale, flipped)


class PoseEstimator:
    """Frames + person boxes -> keypoints (N, K, 3) x, y, score in image pixels, on the device.

    `model` is the plain network; the estimator keeps it (`.model`) and runs a copy moved to the
    device and precision. `progress(done, total)` hears about the warm-up of compiled backends.
    `calibration()` gives typical crops (float32 NumPy batches) for the int8 precision
    (`realtime.stream.quantize.CalibrationInputs`).
    """

    def __init__(
        self,
        model: nn.Module,
        pose: PoseConfig,
        config: PoseStageConfig,
        progress: Callable[[int, int], None] | None = None,
        calibration: Callable[[], Sequence[np.ndarray]] | None = None,
    ) -> None:
        self.pose = pose
        self.config = config
        self.model = model
        self.device = torch.device(config.device)
        self.precision = config.resolved_precision
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.codec = pose.codec(config.decoder, config.blur_kernel, config.flip_alpha)
        shape = (1, 3, 1, 1)
        self._mean = (torch.tensor(IMAGENET_MEAN) * 255).view(shape).to(self.device)
        self._std = (torch.tensor(IMAGENET_STD) * 255).view(shape).to(self.device)
        self.backend = config.resolved_backend
        network = _inference_copy(model, pose, self.device, self.dtype)
        self.folded = not any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
        # OpenVINO takes float32 NCHW crops and computes in bf16 inside where the CPU has it.
        self._autocast = self.precision == "bf16" and self.backend != "openvino"
        self._channels_last = self.backend != "openvino"
        self.fused = False
        decoder = _Decoder(self.codec)
        if self.backend == "openvino":
            self._network, self._decode = self._openvino(network, calibration), decoder
        elif self.backend == "eager":
            self._network, self._decode = self._torch_network(network), decoder
        else:
            _allow_recompiles(len(config.batch_buckets))
            self._network = self._compiled_network(self._torch_network(network))
            # On the CPU (no CUDA graphs) one graph with a dynamic batch serves every bucket.
            self._decode = torch.compile(decoder, dynamic=self.device.type == "cpu")
            self.warm_up(progress)

    def describe(self) -> dict[str, object]:
        """What runs, as chosen for this device: printed at start, recorded by the benchmark."""
        return {
            "backend": self.backend,
            "device": str(self.device),
            "precision": self.precision,
            "bf16_hardware": cpu_has_bf16() if self.device.type == "cpu" else None,
            "channels_last": self._channels_last,
            "batch_norms_folded": self.folded,
            "activations_fused": self.fused,
            "flip_test": self.config.flip_test,
            "decoder": self.config.decoder,
            "blur_kernel": self.config.blur_kernel,
            "batch_buckets": list(self.config.batch_buckets),
        }

    @property
    def graphs_per_thread(self) -> bool:
        """Whether a thread that calls this estimator must warm it up itself: CUDA-graph trees
        (the compile backend on CUDA) are captured per thread."""
        return self.backend == "compile" and self.device.type == "cuda"

    @property
    def crops_per_person(self) -> int:
        return 2 if self.config.flip_test else 1

    def flips(self, flip: bool | None = None) -> bool:
        """Whether a call with `flip` runs the flip test: the config's choice when None; a call
        may turn it off for eager and openvino (the compiled backends keep their shapes)."""
        if flip is None or self.backend not in ("eager", "openvino"):
            return self.config.flip_test
        return flip and self.config.flip_test

    @property
    def largest_bucket(self) -> int:
        return self.config.batch_buckets[-1]

    def bucket_for(self, count: int) -> int:
        """People a chunk of `count` is padded to (eager and openvino run exactly `count`)."""
        if self.backend in ("eager", "openvino"):
            return count
        return next(b for b in self.config.batch_buckets if b >= count)

    @torch.inference_mode()
    def __call__(
        self,
        images: Tensor,
        boxes: Tensor,
        counts: Sequence[int] | None = None,
        lap: Lap | None = None,
        flip: bool | None = None,
    ) -> Tensor:
        """Pose every box.

        Args:
            images: (B, 3, H, W) RGB on the device, uint8 or float in [0, 255].
            boxes: (N, 4) x1, y1, x2, y2 in image pixels, finite, on the device; the boxes of
                image 0 first, then those of image 1, ...
            counts: (B,) boxes per image, on the host; None when B is 1.
            lap: a stage timer's `lap`, called after "crop", "pose" and "refine".
            flip: False skips the flip test this call (see `flips`); None: the config's.

        Returns:
            (N, K, 3) float32 x, y in image pixels and the keypoint score; NaN for a person
            whose heatmaps are not finite.
        """
        counts = [len(boxes)] if counts is None else list(counts)
        if len(counts) != len(images) or sum(counts) != len(boxes):
            raise ValueError(
                f"{len(boxes)} boxes on {len(images)} images do not match counts {counts}"
            )
        images = images.to(self.device)
        if not images.is_floating_point() and self.device.type != "cpu":
            images = images.float()
        ends = list(itertools.accumulate(counts))  # host ints: where each image's boxes end
        flip = self.flips(flip)
        chunks = []
        for start in range(0, len(boxes), self.largest_bucket):
            stop = min(start + self.largest_bucket, len(boxes))
            segments = _segments(ends, start, stop)
            chunks.append(self._chunk(images, boxes[start:stop], segments, lap, flip))
        if not chunks:
            return torch.zeros(0, self.pose.num_keypoints, 3, device=self.device)
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def _chunk(
        self,
        images: Tensor,
        boxes: Tensor,
        segments: list[tuple[int, int]],
        lap: Lap | None,
        flip: bool,
    ) -> Tensor:
        count = len(boxes)
        pad = self.bucket_for(count) - count
        boxes = boxes.to(self.device, torch.float32)
        if pad:  # padding people: one-pixel regions of the last image, dropped at the end
            boxes = torch.cat((boxes, boxes.new_zeros(pad, 4)))
            image, n = segments[-1]
            segments = [*segments[:-1], (image, n + pad)]
        crops, center, scale = self._crops(images, boxes, segments, flip)
        _lap(lap, "crop")
        with autocast(self.device, "bf16" if self._autocast else "fp32"):
            heatmaps = self._network(crops)
        if self.backend == "compile":
            # CUDA-graph outputs are overwritten by the next replay: take a copy before returning.
            heatmaps = heatmaps.clone()
        _lap(lap, "pose")
        keypoints = self._decode(heatmaps, center, scale, flip)
        _lap(lap, "refine")
        return keypoints[:count] if pad else keypoints

    def _crops(
        self, images: Tensor, boxes: Tensor, segments: list[tuple[int, int]], flip: bool
    ) -> tuple[Tensor, ...]:
        """Normalised crops (B or 2B, 3, H, W) in the network's dtype, and the regions (B, 2).

        `segments` (image, people) cover the boxes in order. One warp per image for all its
        people (the image is shared, not copied per person)."""
        h, w = self.pose.input_size
        center, scale = box_to_center_scale(boxes, aspect_ratio=w / h)
        if images.dtype == torch.uint8:  # CPU frames
            crops = _cpu_crops(images, segments, center, scale, (h, w)).float()
        else:
            parts, start = [], 0
            for image, n in segments:
                one, stop = images[image : image + 1], start + n
                parts.append(warp_crops(one, None, center[start:stop], scale[start:stop], (h, w)))
                start = stop
            crops = parts[0] if len(parts) == 1 else torch.cat(parts)  # float32 geometry
        if flip:
            # A mirrored crop of a region is the crop mirrored: no second warp needed.
            crops = torch.cat((crops, crops.flip(-1)))
        crops = ((crops - self._mean) / self._std).to(self.dtype)
        layout = torch.channels_last if self._channels_last else torch.contiguous_format
        return crops.contiguous(memory_format=layout), center, scale

    def warm_up(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Run every bucket once, so compiling (and CUDA-graph capture) happens now, not
        mid-stream."""
        h, w = self.pose.input_size
        images = torch.zeros(1, 3, h, w, device=self.device)
        buckets = self.config.batch_buckets
        for done, bucket in enumerate(buckets, start=1):
            logger.info(
                "warming up the %s pose network: bucket %d/%d (%d people)",
                self.backend, done, len(buckets), bucket,
            )  # fmt: skip
            boxes = torch.tensor([[0.0, 0.0, w, h]], device=self.device).expand(bucket, 4)
            for _ in range(2):  # CUDA graphs record on the second call of a shape
                self(images, boxes.contiguous())
            if progress is not None:
                progress(done, len(buckets))

    def _torch_network(self, network: nn.Module) -> nn.Module:
        """The network as PyTorch runs it fastest here: bf16 weights when asked, channels-last,
        and on the CPU in eager mode each convolution fused with its activation."""
        if self.precision == "bf16" and self.folded:
            # With no batch norm left, bf16 weights and activations lose nothing autocast keeps,
            # and skip its per-call weight casts (a third faster on an AMX CPU).
            self.dtype, self._autocast = torch.bfloat16, False
            network = network.to(self.dtype)
        # oneDNN's fast convolutions are channels-last, and so are cuDNN's fp16 tensor-core ones.
        network = network.to(memory_format=torch.channels_last)
        if self.device.type == "cpu" and self.backend == "eager":  # compile fuses on its own
            example = torch.randn(2, 3, *self.pose.input_size).to(self.dtype)
            example = example.contiguous(memory_format=torch.channels_last)
            network = fuse_activations(network, example)
        self.fused = any(isinstance(m, FusedConv) for m in network.modules())
        return network

    def _openvino(self, network: nn.Module, calibration) -> nn.Module:
        from realtime.openvino_runtime import OpenVinoNetwork

        shape = (2 * self.crops_per_person, 3, *self.pose.input_size)
        return OpenVinoNetwork(
            network.float(), shape, dynamic=(0,), precision=self.precision,
            name=f"{self.pose.arch}-pose", cache_dir=self.config.cache_dir,
            calibration=calibration,
        )  # fmt: skip

    def _compiled_network(self, network: nn.Module) -> nn.Module:
        if self.backend == "compile":
            if self.device.type == "cpu":
                # Weights as constants: inductor pre-packs them for oneDNN (about 2x in bf16).
                # The batch norms are folded already: inductor's own folding of a transposed
                # convolution's batch norm gives wrong outputs (torch 2.14).
                import torch._inductor.config as inductor

                inductor.freezing = True
                return torch.compile(network, dynamic=True)
            # CUDA graphs remove per-kernel launch overhead; buckets keep the shapes static.
            return torch.compile(network, mode="reduce-overhead", dynamic=False)
        from realtime.pose.tensorrt import tensorrt_module  # optional: torch-tensorrt

        return tensorrt_module(network, self.pose, self.config, self.crops_per_person)


def _cpu_crops(
    images: Tensor,
    segments: list[tuple[int, int]],
    center: Tensor,
    scale: Tensor,
    size: tuple[int, int],
) -> Tensor:
    """`warp_crops` for (B, 3, H, W) uint8 CPU frames with OpenCV: (N, 3, h, w) uint8 crops,
    bilinear, pixel centres at integers, zeros outside (channels-last in memory)."""
    h, w = size
    matrices = grid_to_image_matrix(center, scale, size).double().numpy()
    out = np.empty((len(center), h, w, 3), np.uint8)
    flags, k = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, 0
    for image, n in segments:
        frame = np.ascontiguousarray(images[image].permute(1, 2, 0).numpy())
        for _ in range(n):
            cv2.warpAffine(frame, matrices[k], (w, h), dst=out[k], flags=flags, borderValue=0)
            k += 1
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _segments(ends: list[int], start: int, stop: int) -> list[tuple[int, int]]:
    """(image, people) of the boxes start..stop, given where each image's boxes end."""
    out, first = [], start
    for image, end in enumerate(ends):
        if end > first and first < stop:
            n = min(end, stop) - first
            out.append((image, n))
            first += n
    return out


def _lap(lap: Lap | None, stage: str) -> None:
    if lap is not None:
        lap(stage)


def _inference_copy(
    model: nn.Module, pose: PoseConfig, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """A copy of the network for inference: batch norms folded into the convolutions (checked
    on a random batch), in eval mode, on `device` in `dtype`. The caller's module is left as it
    was (its training flag aside)."""
    param = next(model.parameters(), None)
    example = torch.randn(
        2, 3, *pose.input_size, device=param.device if param is not None else "cpu"
    )
    network = fold_batch_norms(model, example)
    if network is model:
        network = copy.deepcopy(model)
    return network.eval().to(device, dtype)


def _allow_recompiles(buckets: int) -> None:
    """Room in dynamo's cache for every bucket of several estimators (decoders, flip on/off)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 8 * buckets))
