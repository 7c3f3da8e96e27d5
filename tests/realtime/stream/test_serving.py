"""The serving worker without a browser: engines warm up on the thread that serves them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from toys import DotFinder

from ccm.checkpoint import PoseConfig
from realtime.detect.detector import Detections, Detector
from realtime.pose.config import PoseStageConfig
from realtime.pose.estimator import PoseEstimator
from realtime.stream.pipeline import PipelineConfig, PosePipeline
from realtime.stream.serving import PipelineCache, ServingWorker

POSE = PoseConfig("ccm_mobilenetv2", input_size=(128, 96))


class NoDetector(Detector):
    device = torch.device("cpu")

    def detect(self, images: torch.Tensor) -> list[Detections]:
        return [Detections(torch.zeros(0, 4), torch.zeros(0)) for _ in images]


@pytest.mark.parametrize("per_thread", [True, False])
def test_the_worker_warms_engines_up_on_its_own_thread_before_serving(monkeypatch, per_thread):
    # CUDA-graph trees are per thread: graphs captured on the main thread, where the engine was
    # built, would be captured again on the serving thread, mid-stream.
    monkeypatch.setattr(PoseEstimator, "graphs_per_thread", property(lambda self: per_thread))
    estimator = PoseEstimator(DotFinder(), POSE, PoseStageConfig(backend="eager", blur_kernel=0))
    warmed: list[str] = []
    monkeypatch.setattr(
        estimator, "warm_up", lambda: warmed.append(threading.current_thread().name)
    )
    pipeline = PosePipeline(NoDetector(), estimator, None, PipelineConfig())
    worker = ServingWorker(PipelineCache(pipeline, Path("pose.safetensors")))
    try:
        served = worker.call(lambda: threading.current_thread().name, timeout=30)
    finally:
        worker.close()
    assert served == "ccm-pose-serving"
    assert warmed == (["ccm-pose-serving"] if per_thread else [])
    assert worker.stats.jobs == 2  # the warm-up ran first, as a job of its own
