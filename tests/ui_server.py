"""What the UI tests share: a tiny pose model and a random YOLO that find some "people"."""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from ccm.checkpoint import PoseConfig, save_checkpoint
from realtime.detect.detector import DetectorConfig
from realtime.stream.assemble import PipelineSpec
from realtime.stream.pipeline import PipelineConfig


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    config = PoseConfig("ccm_mobilenetv2", input_size=(128, 96))
    model = config.build_model()
    # Fresh weights give heatmaps of ~1e-16 (activations vanish through BatchNorm's unit running
    # variance): calibrate BatchNorm on one random batch and scale the prediction layer, so the
    # heatmaps peak around 0.5-1 and some keypoints pass the renderer's 0.3 threshold.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        model.train()(torch.randn(4, 3, *config.input_size))
        model.head.final_layer.weight.mul_(8.0)
    model.eval()
    return save_checkpoint(path, model, config)


def tiny_options(pose: Path) -> PipelineSpec:
    """A pipeline on the CPU around `tiny_checkpoint(pose)` and a random-weight YOLO (conf 0,
    at most 3 boxes)."""
    return PipelineSpec(
        pose=tiny_checkpoint(pose),
        detector=Path("yolo11n.yaml"),
        device="cpu",
        detection=DetectorConfig(conf=0.0, max_det=3, imgsz=320),
        pipeline=PipelineConfig(min_pose_score=0.0),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def camera_args(camera: Path) -> list[str]:
    """Chromium flags: headless-safe, no network of its own, `camera` (.y4m) as the webcam."""
    return [
        "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}",
        "--disable-background-networking", "--disable-component-update",
    ]  # fmt: skip
