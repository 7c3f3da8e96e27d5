"""The reference the benchmark compares against: ultralytics' YOLO-pose predictor on the same
frames, with the same detector settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import torch

from ccm.poses import FramePoses
from realtime.detect.detector import DetectorConfig, shipped_model_yaml
from realtime.device import cpu_threads
from realtime.io.frames import Frame
from realtime.stream.results import FrameResult
from realtime.weights.verify import UntrustedWeightsError, check_weights_trusted

REFERENCE_SPEED = ("preprocess", "inference", "postprocess")


def check_reference_weights(weights: str | Path, trust: bool = False) -> str:
    """`weights` as a string if it is a model yaml ultralytics ships, or a local file that is
    safe to unpickle (a manifest hash, or `trust`: see `check_weights_trusted`)."""
    name = str(weights)
    if "://" in name or not (Path(name).is_file() or shipped_model_yaml(name)):
        raise FileNotFoundError(
            f"reference weights {name!r} not found: pass a local YOLO-pose .pt, or a model yaml "
            "ultralytics ships (e.g. yolo11n-pose.yaml, random weights) for timing only"
        )
    if not shipped_model_yaml(name):
        try:
            check_weights_trusted(name, trust)
        except UntrustedWeightsError as err:
            raise UntrustedWeightsError(f"--reference-weights {err}") from None
    return name


class YoloPoseReference:
    """ultralytics' YOLO-pose predictor doing our job: one `predict` per frame, its keypoints as a
    `FramePoses` (so the same worker draws the skeletons and encodes the mp4 and JSON Lines).

    It gets the detector's input size, thresholds and precision. Stage times are ultralytics' own
    speed dict (preprocess, inference, postprocess), in ms.
    """

    def __init__(
        self, weights: str | Path, device: torch.device, detection: DetectorConfig
    ) -> None:
        from ultralytics import YOLO
        from ultralytics.cfg import DEFAULT_CFG_DICT

        name = check_reference_weights(weights, detection.trust)
        self.weights = name
        self.model = YOLO(name)
        if self.model.task != "pose":
            raise ValueError(
                f"reference weights {name!r} are a {self.model.task!r} model, not 'pose'"
            )
        half = detection.half and device.type == "cuda"
        # ultralytics 8.4 replaced `half` with `quantize`.
        precision = (
            {"quantize": 16 if half else None} if "quantize" in DEFAULT_CFG_DICT else {"half": half}
        )
        self.args = dict(
            imgsz=detection.imgsz, conf=detection.conf, iou=detection.iou,
            max_det=detection.max_det, device=str(device), verbose=False, save=False, **precision,
        )  # fmt: skip

    def stream(self, frames: Iterator[Frame]) -> Iterator[FrameResult]:
        for frame in frames:
            # PyTorch's own thread count, whatever our pipeline chose for itself (one thread when
            # OpenVINO runs its networks), and again after ultralytics' first CPU call, which sets
            # cpu_count - 1.
            threads = torch.get_num_threads()
            torch.set_num_threads(cpu_threads())
            bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)  # ultralytics reads BGR
            try:
                result = self.model.predict(bgr, **self.args)[0]
            finally:
                torch.set_num_threads(threads)
            n = len(result.boxes)
            keypoints = result.keypoints.data.float().cpu() if n else torch.zeros(0, 17, 3)
            poses = FramePoses(
                frame.index, frame.pts, result.boxes.xyxy.float().cpu(),
                result.boxes.conf.float().cpu(), keypoints, torch.full((n,), -1),
            )  # fmt: skip
            timings = {k: float(result.speed[k]) for k in REFERENCE_SPEED}
            yield FrameResult(frame, poses, timings, batch=1, people=n)
