"""Build a ready pipeline from plain options: the one place that knows every stage's config.

`app.py` parses flags into `PipelineSpec` and calls `build_pipeline` once; the CLI, the
Gradio UI and the benchmark all share the result. Live work (cameras and streams, the browser
webcam, `bench --mode latency`) builds with `build_live_pipeline`: int8 networks on a CPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ccm.checkpoint import load_checkpoint
from realtime.detect.detector import DetectorConfig, PersonDetector
from realtime.device import cpu_threads, leave_cores_to_openvino, resolve_device
from realtime.pose.config import PoseStageConfig
from realtime.pose.estimator import PoseEstimator
from realtime.stream.pipeline import PipelineConfig, PosePipeline
from realtime.stream.quantize import CalibrationError, CalibrationInputs
from realtime.temporal.fusion import TemporalConfig, TemporalFusion
from realtime.weights.manifest import WEIGHTS_DIR, load_manifest, manifest_path
from realtime.weights.recommended import demo_notice
from realtime.weights.verify import select_detector_weights, select_pose_checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a user can choose about the pipeline: weights, device and every stage's config
    (`PipelineConfig` is the pipeline stage's own). Paths None pick the defaults in weights/."""

    pose: Path | None = None
    detector: Path | None = None
    device: str = "auto"
    engine: PoseStageConfig = field(default_factory=PoseStageConfig)
    detection: DetectorConfig = field(default_factory=DetectorConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)


def default_pose_checkpoint(weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The pose checkpoint to use when none is named: the present, verified one with the best AP.

    See `realtime.weights.verify.select_pose_checkpoint`; it logs which one it picked and why.
    """
    return select_pose_checkpoint(weights_dir)


def default_detector_weights(weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The YOLO person detector to use when none is named: the verified one with the best AP.

    See `realtime.weights.verify.select_detector_weights`; it logs which one it picked.
    """
    return select_detector_weights(weights_dir)


def build_pipeline(options: PipelineSpec) -> PosePipeline:
    """Load the pose checkpoint and the detector, build (and warm up) the pose stage, wire the
    stages."""
    device = str(resolve_device(options.device))
    pose_path = options.pose or default_pose_checkpoint()
    detector_weights = options.detector or default_detector_weights()
    notice = demo_notice((pose_path, detector_weights), load_manifest(manifest_path(WEIGHTS_DIR)))
    if notice is not None:
        logger.warning(notice)  # before the slow part, among the first lines a user reads
    model, pose_config = load_checkpoint(pose_path)
    logger.info(
        "pose model: %s (%s, input %s)", pose_path, pose_config.arch, pose_config.input_size
    )
    if device.startswith("cuda"):  # shapes are fixed (batch buckets, one frame size): tune once
        torch.backends.cudnn.benchmark = True
    engine_config = dataclasses.replace(
        options.engine, device=device, half=options.engine.half and device != "cpu"
    )
    detection = dataclasses.replace(options.detection, device=device, weights=str(detector_weights))
    calibration = None
    if "int8" in (engine_config.resolved_precision, detection.precision):
        calibration = CalibrationInputs(model, pose_config, engine_config, detection)
    estimator = PoseEstimator(
        model, pose_config, engine_config, calibration=calibration and calibration.pose
    )
    logger.info("pose stage: %s", ", ".join(f"{k} {v}" for k, v in estimator.describe().items()))
    detector = PersonDetector(detection, calibration=calibration and calibration.detector)
    logger.info("person detector: %s (%s, %s, input %d)", detection.weights, detector.backend,
                detector.precision, detector.config.imgsz)  # fmt: skip
    if estimator.backend == "openvino" and detector.backend == "openvino":
        detector.network  # built now, with the whole thread budget  # noqa: B018
        leave_cores_to_openvino()  # 5 to 13 % faster (BENCHMARKS.md)
        logger.info("both networks on OpenVINO (%d threads); PyTorch keeps one", cpu_threads())
    temporal = TemporalFusion(options.temporal) if options.temporal.method != "none" else None
    return PosePipeline(detector, estimator, temporal, options.pipeline)


def live_precision(options: PipelineSpec) -> PipelineSpec:
    """The networks for live work: int8 where both run on OpenVINO on the CPU and no precision
    was chosen, else `options` as they are. On two cores int8 cut a live frame's latency by
    about a third at the same AP on held-out clips, and gave one browser visitor 23 pose
    updates/s against 17 (BENCHMARKS.md). Files keep float: they are not waited for."""
    engine, detection = options.engine, options.detection
    chosen = engine.precision != "auto" or detection.precision != "auto" or engine.half
    if chosen or engine.resolved_backend != "openvino" or detection.backend == "torch":
        return options
    if importlib.util.find_spec("nncf") is None:
        logger.info("both networks float: int8 would need NNCF (pip install nncf)")
        return options
    logger.info("live: both networks in int8 on this CPU (`--precision bf16` or `fp32` keeps "
                "them float)")  # fmt: skip
    return dataclasses.replace(
        options,
        engine=dataclasses.replace(engine, precision="int8"),
        detection=dataclasses.replace(detection, precision="int8"),
    )


def build_live_pipeline(options: PipelineSpec) -> tuple[PosePipeline, PipelineSpec]:
    """The pipeline for live work and the options it was built with: `live_precision`'s, or
    `options` with a warning where int8 cannot be calibrated (the detector finds nobody in the
    calibration clips)."""
    live = live_precision(options)
    if live is options:
        return build_pipeline(options), options
    try:
        return build_pipeline(live), live
    except CalibrationError as err:
        logger.warning("both networks stay float: %s", err)
        return build_pipeline(options), options
