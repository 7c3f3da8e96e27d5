"""Person detector: ultralytics YOLO restricted to class 0 (person), and boxes for the frames
between detections.

    detector = PersonDetector(DetectorConfig(weights="weights/yolo11n.pt"))
    boxes, scores = detector(frame)      # frame: (H, W, 3) uint8 RGB

Boxes are x1, y1, x2, y2 in original image pixels, as float32 torch tensors on the detector's
device. Weights come only from local files (or a model .yaml that ultralytics ships, which builds
a randomly initialised network); nothing is downloaded.

Detection can run only every few frames (rtmlib's `det_frequency`): `interpolate_detections` gives
a file's frames in between boxes from the detections on either side,
`ccm.geometry.boxes_from_keypoints` a camera's from the previous frame's poses.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from realtime.device import autocast, resolve_device
from realtime.weights.verify import check_weights_trusted

log = logging.getLogger(__name__)

PERSON_CLASS = 0  # COCO's "person"
DETECTOR_BACKENDS = ("auto", "torch", "openvino")
_BOX_TASKS = frozenset({"detect", "segment", "pose"})  # tasks whose results carry boxes


class Detections(NamedTuple):
    """People found in one frame.

    Attributes:
        boxes: (N, 4) float32, x1, y1, x2, y2 in original image pixels.
        scores: (N,) float32, the detector's confidence, sorted high to low.
    """

    boxes: torch.Tensor
    scores: torch.Tensor


class Detector(Protocol):
    """A person detector as the pipeline calls it: `detect(images)` takes a batch of frames
    already on `device`, (B, 3, H, W) uint8 RGB, and returns one `Detections` per frame, on that
    device, in original image pixels."""

    device: torch.device

    def detect(self, images: torch.Tensor) -> list[Detections]: ...


@dataclass(frozen=True)
class DetectorConfig:
    """How to build and run the person detector.

    Attributes:
        weights: a local weights file (or exported model) ultralytics loads, or the name of a model
            .yaml ultralytics ships (e.g. "yolo11n.yaml": random weights, for tests).
        conf: minimum confidence of a kept box.
        iou: IoU above which NMS suppresses the lower-scored box.
        imgsz: inference size in pixels (the longer side after letterboxing), a multiple of 32;
            None runs the weights at the size they were trained at (ultralytics records it in
            its weight files), or 640 when they do not say.
        max_det: most boxes kept per frame.
        device: "cpu", "cuda", "cuda:1", ...; None takes the first GPU when there is one.
        half: fp16 inference on CUDA (ignored on the CPU).
        precision: "auto" or "fp32" (fp16 on CUDA with `half`, else fp32: ultralytics' own
            predictor's numbers), "bf16" (autocast; on a 2-core AMX CPU it measured no faster
            for YOLO11n at 320, 13.7 against 12.4 ms a frame, so "auto" keeps fp32) or "int8"
            (the openvino backend, quantized: see `realtime.stream.quantize`).
        backend: "torch", "openvino" (the CPU) or "auto" (openvino on the CPU where the package
            is installed: about twice as fast for YOLO11n at 320 on two cores, same boxes to
            1e-3 pixels in fp32; torch elsewhere).
        trust: load a weights file whose hash the manifest does not list. Ultralytics unpickles
            weight files in full, which runs any code they hold, so by default only files with
            a manifest hash (and model .yaml files, which are parsed) are loaded.
    """

    weights: str | Path = "yolo11n.pt"
    conf: float = 0.3
    iou: float = 0.6
    imgsz: int | None = None
    max_det: int = 100
    device: str | None = None
    half: bool = True
    precision: str = "auto"
    backend: str = "auto"
    trust: bool = False

    def __post_init__(self) -> None:
        if self.backend not in DETECTOR_BACKENDS:
            raise ValueError(
                f"unknown detector backend {self.backend!r}; choose from {DETECTOR_BACKENDS}"
            )
        if self.precision not in ("auto", "fp32", "bf16", "int8"):
            raise ValueError(
                f"detector precision must be auto, fp32, bf16 or int8, got {self.precision}"
            )
        if not 0.0 <= self.conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError(f"iou must be in [0, 1], got {self.iou}")
        if self.imgsz is not None and (self.imgsz <= 0 or self.imgsz % 32):
            raise ValueError(f"imgsz must be a positive multiple of 32, got {self.imgsz}")
        if self.max_det < 1:
            raise ValueError(f"max_det must be at least 1, got {self.max_det}")


def shipped_model_yaml(name: str | Path) -> Path | None:
    """The model .yaml ultralytics ships under `name` ("yolo11n.yaml" -> .../yolo11.yaml), or None.

    A scale letter after the version number (n, s, m, l, x) selects a width/depth the shared
    file describes, the way ultralytics' own `yaml_model_load` reads the name.
    """
    path = Path(name)
    if path.suffix not in {".yaml", ".yml"} or len(path.parts) != 1:
        return None
    from ultralytics.utils import ROOT

    wanted = {path.name, re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", path.name)}
    for candidate in sorted((ROOT / "cfg" / "models").rglob("*.y*ml")):
        if candidate.name in wanted:
            return candidate
    return None


def _missing_weights_message(weights: str | Path) -> str:
    name = Path(weights).name
    return (
        f"detector weights {str(weights)!r} not found: it is neither an existing file nor a model "
        f".yaml that ultralytics ships. Get the weights with `python app.py weights fetch {name}` "
        "and pass the path of the downloaded file (weights are never downloaded implicitly)."
    )


class PersonDetector(Detector):
    """Ultralytics YOLO, class 0 only, on one device, fed device tensors.

    `detect(images)` takes frames already on the device (the pipeline's one upload) and runs
    ultralytics' own steps there: its letterbox (rectangular, to the stride), its network (fused,
    fp16 on CUDA when asked), its NMS and its box rescaling, so the boxes are those its predictor
    gives for the same frames. On the CPU the resize is OpenCV's, as in ultralytics' predictor;
    on a GPU it is a bilinear resize on the device. Calling the detector with an (H, W, 3) uint8
    RGB array uploads it and detects.
    """

    def __init__(
        self,
        config: DetectorConfig,
        calibration: Callable[[], Sequence[np.ndarray]] | None = None,
    ) -> None:
        """`calibration()` gives typical network inputs for the int8 precision
        (`realtime.stream.quantize.CalibrationInputs`)."""
        from ultralytics import YOLO

        self.config = config
        self.device = resolve_device(config.device)
        weights = str(config.weights)
        if "://" in weights or not (Path(weights).exists() or shipped_model_yaml(weights)):
            raise FileNotFoundError(_missing_weights_message(config.weights))
        if not shipped_model_yaml(weights):
            why = check_weights_trusted(weights, config.trust)
            log.debug("loading detector weights %s: %s", weights, why)
        try:
            self.model = YOLO(weights)
        except Exception as err:  # ultralytics raises many kinds for a broken file
            raise ValueError(f"detector weights {weights!r} could not be loaded: {err}") from err
        if self.model.task not in _BOX_TASKS:
            raise ValueError(
                f"detector weights {weights!r} are a {self.model.task!r} model; "
                f"a detector needs one of {sorted(_BOX_TASKS)}"
            )
        first = str(self.model.names.get(PERSON_CLASS, ""))
        if first != "person" and not first.isdigit():
            log.warning("class 0 of %s is %r, not 'person'; detecting it as person", weights, first)
        if config.imgsz is None:
            self.config = dataclasses.replace(config, imgsz=trained_size(self.model.overrides))
            log.info("detector input size %d (as trained)", self.config.imgsz)
        self.half = config.half and self.device.type == "cuda"
        self.precision = "fp16" if self.half else config.precision.replace("auto", "fp32")
        self.stride = max(int(self.model.model.stride.max()), 32)
        self._classes = len(self.model.names)
        self._end2end = bool(getattr(self.model.model, "end2end", False))
        self.backend = _resolve_backend(config.backend, self.device)
        if self.precision == "int8" and self.backend != "openvino":
            raise ValueError("an int8 detector runs on the openvino backend (the CPU)")
        self._calibration = calibration
        self._network: torch.nn.Module | None = None

    @property
    def network(self) -> torch.nn.Module:
        """The YOLO network ready to run, prepared on first use as ultralytics' predictor does:
        batch norm fused into the convolutions, on the device, fp16 on CUDA when asked, and
        channels-last weights on x86 CPUs with oneDNN (its AutoBackend's choice)."""
        if self._network is None:
            network = self.model.model
            network.fuse(verbose=False)
            dtype = torch.float16 if self.half else torch.float32
            network = network.eval().to(self.device, dtype)
            if self.backend == "openvino":
                network = _openvino_network(
                    network, self.config.imgsz, self.precision, self._calibration
                )
            elif _channels_last_cpu(self.device):
                network.to(memory_format=torch.channels_last)
            self._network = network
        return self._network

    def __call__(self, frame: np.ndarray) -> Detections:
        """Detect people in one (H, W, 3) uint8 RGB frame; `Detections` on `self.device`."""
        return self.detect_batch([frame])[0]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect people in several (H, W, 3) uint8 RGB frames (sizes may differ)."""
        checked = [_check_frame(f, i) for i, f in enumerate(frames)]
        if len({f.shape for f in checked}) == 1:  # one size: one forward pass
            images = torch.from_numpy(np.stack(checked)).to(self.device).permute(0, 3, 1, 2)
            return self.detect(images)
        return [self.detect_batch([f])[0] for f in checked]

    @torch.inference_mode()
    def detect(self, images: torch.Tensor) -> list[Detections]:
        """Detect people in a batch of frames of one size, in one forward pass.

        Args:
            images: (B, 3, H, W) RGB, uint8 (or float in [0, 255]), on `self.device`.

        Returns:
            One `Detections` per frame, in that frame's image pixels, on `self.device`.
        """
        if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape:
            raise ValueError(f"images must be (B, 3, H, W) RGB, got {tuple(images.shape)}")
        if len(images) == 0:
            return []
        batch = self._letterbox(images)
        with autocast(self.device, "fp32" if self.backend == "openvino" else self.precision):
            prediction = self.network(batch)
        if isinstance(prediction, tuple | list):  # (predictions, raw head outputs) in eval
            prediction = prediction[0]
        prediction = prediction.float()
        kept = self._nms(prediction)
        height, width = images.shape[-2:]
        out = []
        for det in kept:
            boxes = scale_boxes(batch.shape[2:], det[:, :4].float(), (height, width))
            out.append(Detections(boxes=boxes, scores=det[:, 4].float()))
        return out

    def _letterbox(self, images: torch.Tensor) -> torch.Tensor:
        """ultralytics' LetterBox(auto=True): resize to fit imgsz, pad to the stride with 114,
        centred; returns the network input (B, 3, h, w) in [0, 1]."""
        height, width = images.shape[-2:]
        size = self.config.imgsz
        r = min(size / height, size / width)
        new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
        dw, dh = ((size - new_w) % self.stride) / 2, ((size - new_h) % self.stride) / 2
        top, bottom = round(dh - 0.1), round(dh + 0.1)
        left, right = round(dw - 0.1), round(dw + 0.1)
        if (new_h, new_w) != (height, width):
            images = _resize(images, new_h, new_w)
        dtype = torch.float16 if self.half else torch.float32
        batch = torch.nn.functional.pad(
            images.to(dtype), (left, right, top, bottom), value=LETTERBOX_FILL
        )
        return (batch / 255).contiguous()  # NCHW, as ultralytics feeds its network

    def _nms(self, prediction: torch.Tensor) -> list[torch.Tensor]:
        """Per frame (N, 5) x1, y1, x2, y2, score in letterboxed pixels: the rows ultralytics'
        `non_max_suppression` keeps for class 0 (best class only), the same boxes in the same
        order, with two host syncs per frame instead of its four (one mask for its three
        filters, then torchvision's NMS) and no class tensor uploaded per call."""
        if self._end2end:
            return _ultralytics_nms(prediction, self.config, self._classes, self.model.task)
        import torchvision
        from ultralytics.utils.ops import xywh2xyxy

        c = self.config
        classes = prediction.shape[1] - 4 if self.model.task == "detect" else self._classes
        scores, best = prediction[:, 4 : 4 + classes].max(1)  # (B, anchors), as ultralytics
        candidates = (scores > c.conf) & (best == PERSON_CLASS)
        out = []
        for rows, score, keep in zip(prediction, scores, candidates, strict=True):
            index = keep.nonzero().squeeze(1)  # the one sync for the mask
            boxes, score = xywh2xyxy(rows[:4].T[index]), score[index]
            if len(score) > MAX_NMS:  # ultralytics' cap: the best MAX_NMS by score
                order = score.argsort(descending=True)[:MAX_NMS]
                boxes, score = boxes[order], score[order]
            kept = torchvision.ops.nms(boxes, score, c.iou)[: c.max_det]
            out.append(torch.cat((boxes[kept], score[kept, None]), 1))
        return out


def _ultralytics_nms(
    prediction: torch.Tensor, config: DetectorConfig, classes: int, task: str
) -> list[torch.Tensor]:
    """ultralytics' own `non_max_suppression` for class 0 (end-to-end models)."""
    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:  # ultralytics before 8.3.160 keeps it in ops
        from ultralytics.utils.ops import non_max_suppression

    return non_max_suppression(
        prediction, config.conf, config.iou, classes=[PERSON_CLASS], max_det=config.max_det,
        nc=0 if task == "detect" else classes, end2end=True,
    )  # fmt: skip


MAX_NMS = 30000  # ultralytics' `max_nms`: most boxes that go into NMS
LETTERBOX_FILL = 114.0  # ultralytics' grey padding


def _openvino_network(
    network: torch.nn.Module, size: int, precision: str, calibration=None
) -> torch.nn.Module:
    """The YOLO network on OpenVINO, any batch and input size; its heads set up as ultralytics'
    own exporter sets them (anchors made in the graph for each input size, one output)."""
    from ultralytics.nn.modules.head import Detect

    from realtime.openvino_runtime import OpenVinoNetwork

    network = copy.deepcopy(network)
    for m in network.modules():
        if isinstance(m, Detect):
            m.dynamic, m.export, m.format, m.shape = True, True, "openvino", None
    return OpenVinoNetwork(
        network, (1, 3, size, size), dynamic=(0, 2, 3), precision=precision, name=f"yolo-{size}",
        calibration=calibration,
    )  # fmt: skip


def _resolve_backend(backend: str, device: torch.device) -> str:
    from realtime.openvino_runtime import openvino_available

    if backend == "openvino" and device.type != "cpu":
        raise ValueError(f"the openvino backend runs on the CPU, not {device}")
    if backend != "auto":
        return backend
    return "openvino" if device.type == "cpu" and openvino_available() else "torch"


def _channels_last_cpu(device: torch.device) -> bool:
    return (
        device.type == "cpu"
        and platform.machine() in {"AMD64", "x86_64"}
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (B, 3, H, W) uint8 frames, rounded to uint8 as OpenCV's is."""
    if images.device.type == "cpu" and images.dtype == torch.uint8:
        # On the CPU, OpenCV's resize itself, so the input is the one ultralytics builds.
        hwc = images.permute(0, 2, 3, 1).numpy()
        resized = [cv2.resize(np.ascontiguousarray(f), (width, height)) for f in hwc]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(
        images.float(), size=(height, width), mode="bilinear", align_corners=False
    )
    return out.round_().clamp_(0, 255)


def scale_boxes(shape: Sequence[int], boxes: torch.Tensor, original: Sequence[int]) -> torch.Tensor:
    """Boxes (N, 4) x1, y1, x2, y2 in letterboxed pixels of `shape` (h, w) -> pixels of the
    `original` (H, W) frame, clipped to it; ultralytics' own `scale_boxes`."""
    from ultralytics.utils.ops import scale_boxes as ultralytics_scale_boxes

    return ultralytics_scale_boxes(tuple(shape), boxes.clone(), tuple(original))


def trained_size(overrides: dict[str, Any], default: int = 640) -> int:
    """The input size ultralytics recorded for weights (its `YOLO.overrides`), as one int: the
    longer side of an [h, w] pair, rounded up to a multiple of 32; `default` when absent."""
    size = overrides.get("imgsz", default)
    size = max(size) if isinstance(size, list | tuple) else int(size)
    return -(-size // 32) * 32


def _check_frame(frame: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame {index} must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(
            f"frame {index} must be an (H, W, 3) uint8 RGB array, got {frame.dtype} {frame.shape}"
        )
    return frame


def interpolate_detections(
    before: Detections, after: Detections, t: float, min_iou: float = 0.2
) -> Detections:
    """Detections for a frame a fraction `t` (0..1) of the way from one detected frame to the
    next, as batch runs detect only every few frames.

    The people are those of the nearer detected frame (someone who appears or leaves in
    between does so half-way). Each is matched to the box of the other frame it overlaps most,
    if that box overlaps it most in turn and their IoU is at least `min_iou`; a matched box and
    its score move linearly towards the other frame's, an unmatched one stays as it is.
    Tensor ops only (no host sync); rows sorted by score, high to low.
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    near, far, w = (before, after, t) if t <= 0.5 else (after, before, 1.0 - t)
    if not len(near.boxes) or not len(far.boxes):
        return near
    far_boxes = far.boxes.to(near.boxes)
    iou = box_iou(near.boxes, far_boxes)  # (near, far)
    best = iou.argmax(1)
    mutual = iou.argmax(0)[best] == torch.arange(len(best), device=best.device)
    weight = w * (mutual & (iou.gather(1, best[:, None])[:, 0] >= min_iou))
    boxes = torch.lerp(near.boxes, far_boxes[best], weight[:, None])
    scores = torch.lerp(near.scores, far.scores.to(near.scores)[best], weight)
    order = scores.argsort(descending=True)
    return Detections(boxes[order], scores[order])
