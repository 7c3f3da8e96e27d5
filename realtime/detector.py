"""Person detector: ultralytics YOLO restricted to class 0 (person), and boxes from poses.

    detector = PersonDetector(DetectorConfig(weights="weights/yolo11n.pt"))
    boxes, scores = detector(frame)      # frame: (H, W, 3) uint8 RGB

Boxes are x1, y1, x2, y2 in original image pixels, as float32 torch tensors on the detector's
device. Weights come only from local files (or a model .yaml that ultralytics ships, which builds
a randomly initialised network); nothing is downloaded.

`boxes_from_keypoints` gives boxes from the previous frame's poses, so detection can run only every
few frames (rtmlib's `det_frequency`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from realtime.offline import configure_offline

log = logging.getLogger(__name__)

PERSON_CLASS = 0  # COCO's "person"
_BOX_TASKS = frozenset({"detect", "segment", "pose"})  # tasks whose results carry boxes


class Detections(NamedTuple):
    """People found in one frame.

    Attributes:
        boxes: (N, 4) float32, x1, y1, x2, y2 in original image pixels.
        scores: (N,) float32, the detector's confidence, sorted high to low.
    """

    boxes: torch.Tensor
    scores: torch.Tensor


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
    """

    weights: str | Path = "yolo11n.pt"
    conf: float = 0.3
    iou: float = 0.6
    imgsz: int | None = None
    max_det: int = 100
    device: str | None = None
    half: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError(f"iou must be in [0, 1], got {self.iou}")
        if self.imgsz is not None and (self.imgsz <= 0 or self.imgsz % 32):
            raise ValueError(f"imgsz must be a positive multiple of 32, got {self.imgsz}")
        if self.max_det < 1:
            raise ValueError(f"max_det must be at least 1, got {self.max_det}")


def resolve_device(device: str | None) -> torch.device:
    """`device`, or the first CUDA GPU when None and one exists, else the CPU."""
    if device is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda:0")
    return resolved


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


class PersonDetector:
    """Ultralytics YOLO, class 0 only, on one device. Call it with an RGB frame.

    The first call sets up ultralytics' predictor (fuse, warm-up), so it is slower than the rest.
    """

    def __init__(self, config: DetectorConfig) -> None:
        configure_offline()  # before ultralytics is imported
        from ultralytics import YOLO
        from ultralytics.cfg import DEFAULT_CFG_DICT

        self.config = config
        self.device = resolve_device(config.device)
        weights = str(config.weights)
        if "://" in weights or not (Path(weights).exists() or shipped_model_yaml(weights)):
            raise FileNotFoundError(_missing_weights_message(config.weights))
        self.model = YOLO(weights)
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
        self._predict_args = _predict_args(self.config, self.device, "quantize" in DEFAULT_CFG_DICT)

    def with_thresholds(
        self, conf: float | None = None, iou: float | None = None, max_det: int | None = None
    ) -> PersonDetector:
        """A detector with other thresholds that shares this one's loaded network (no reload).

        Both run on the same ultralytics model object: call them from one thread.
        """
        changes = {"conf": conf, "iou": iou, "max_det": max_det}
        changes = {k: v for k, v in changes.items() if v is not None}
        config = dataclasses.replace(self.config, **changes)  # validates the new values
        other = copy.copy(self)
        other.config = config
        other._predict_args = {**self._predict_args, **_threshold_args(config)}
        return other

    def __call__(self, frame: np.ndarray) -> Detections:
        """Detect people in one frame.

        Args:
            frame: (H, W, 3) uint8 RGB, in image pixels.

        Returns:
            `Detections` in image pixels of `frame`, on `self.device`.
        """
        return self.detect_batch([frame])[0]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect people in several frames in one forward pass.

        Args:
            frames: each (H, W, 3) uint8 RGB; sizes may differ.

        Returns:
            One `Detections` per frame, in that frame's image pixels, on `self.device`.
        """
        if len(frames) == 0:
            return []
        # ultralytics reads numpy input as BGR. cvtColor makes the one copy (~0.5 ms at 1080p); a
        # reversed-channel view would instead be copied inside ultralytics' resize, ~4x slower.
        bgr = [cv2.cvtColor(_check_frame(f, i), cv2.COLOR_RGB2BGR) for i, f in enumerate(frames)]
        threads = torch.get_num_threads()
        results = self.model.predict(bgr, **self._predict_args)
        # ultralytics sets torch to cpu_count - 1 threads on its first CPU call, which would
        # slow the pose network running next to it; keep the process's own setting.
        torch.set_num_threads(threads)
        out = []
        for r in results:
            data = r.boxes.data  # (N, 6): x1, y1, x2, y2, conf, class; already on the device
            out.append(Detections(boxes=data[:, :4].float(), scores=data[:, 4].float()))
        return out


def trained_size(overrides: dict[str, Any], default: int = 640) -> int:
    """The input size ultralytics recorded for weights (its `YOLO.overrides`), as one int: the
    longer side of an [h, w] pair, rounded up to a multiple of 32; `default` when absent."""
    size = overrides.get("imgsz", default)
    size = max(size) if isinstance(size, list | tuple) else int(size)
    return -(-size // 32) * 32


def _threshold_args(config: DetectorConfig) -> dict[str, Any]:
    return {"conf": config.conf, "iou": config.iou, "max_det": config.max_det}


def _predict_args(
    config: DetectorConfig, device: torch.device, has_quantize: bool
) -> dict[str, Any]:
    """Keyword arguments of ultralytics' `predict` for `config` on `device`."""
    half = config.half and device.type == "cuda"
    # ultralytics 8.4 replaced `half` with `quantize`; older releases only know `half`.
    precision = {"quantize": 16 if half else None} if has_quantize else {"half": half}
    return {
        "classes": [PERSON_CLASS],
        "imgsz": config.imgsz,
        "device": str(device),
        "verbose": False,
        "save": False,
        **_threshold_args(config),
        **precision,
    }


def _check_frame(frame: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame {index} must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(
            f"frame {index} must be an (H, W, 3) uint8 RGB array, got {frame.dtype} {frame.shape}"
        )
    return frame


def boxes_from_keypoints(
    keypoints: torch.Tensor,
    score_thr: float = 0.3,
    padding: float = 1.25,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boxes around each person's confident keypoints, enlarged about their centre.

    The tight box spans the keypoints whose score exceeds `score_thr`; its width and height are
    then multiplied by `padding` (1.25 as in rtmlib's `pose_to_bbox`). A person with no keypoint
    above the threshold gets the all-zero box; one with a single such keypoint gets a zero-size
    box at it. Filter with `(x2 > x1) & (y2 > y1)` before cropping.

    Args:
        keypoints: (N, K, 3) x, y in image pixels and the keypoint score.
        score_thr: keypoints with score <= this are ignored.
        padding: scale factor on the box's width and height, > 0.
        image_size: (H, W) to clip the boxes to [0, W] x [0, H] like the detector's, or None.

    Returns:
        (N, 4) x1, y1, x2, y2 in image pixels, same dtype and device as `keypoints`.
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must have shape (N, K, 3), got {tuple(keypoints.shape)}")
    if not padding > 0:
        raise ValueError(f"padding must be > 0, got {padding}")
    xy = keypoints[..., :2]
    visible = (keypoints[..., 2] > score_thr).unsqueeze(-1)  # (N, K, 1)
    anyone = visible.any(dim=1)  # (N, 1)
    lo = torch.where(visible, xy, torch.inf).amin(dim=1)  # (N, 2)
    hi = torch.where(visible, xy, -torch.inf).amax(dim=1)
    lo, hi = torch.where(anyone, lo, 0.0), torch.where(anyone, hi, 0.0)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * padding
    boxes = torch.cat([centre - half, centre + half], dim=-1)
    if image_size is not None:
        h, w = image_size
        limit = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
    return boxes
