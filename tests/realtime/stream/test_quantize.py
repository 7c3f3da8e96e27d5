"""int8 on the CPU: both networks quantized on what they are fed on the bundled clips, once,
and the pipeline's poses on a held-out clip as accurate as in float."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ccm.checkpoint import load_checkpoint
from realtime.detect.detector import DetectorConfig, PersonDetector
from realtime.pose.config import PoseStageConfig
from realtime.stream.assemble import (
    PipelineSpec,
    build_live_pipeline,
    build_pipeline,
    live_precision,
)
from realtime.stream.quantize import CalibrationError, CalibrationInputs
from realtime.stream.serving import PipelineCache
from realtime.weights.manifest import WEIGHTS_DIR
from train.coco_metrics import coco_evaluate
from train.live_study import run_live
from train.synthetic.videos import VideoConfig, generate_video
from train.video_eval import coco_results, video_ground_truth

DEMO_POSE = WEIGHTS_DIR / "demo-ccm-mobilenetv2-128x96.safetensors"
DEMO_DETECTOR = WEIGHTS_DIR / "demo-yolo11n-person.pt"


def test_calibration_records_both_networks_inputs_once():
    model, pose = load_checkpoint(DEMO_POSE)
    detection = DetectorConfig(weights=str(DEMO_DETECTOR), device="cpu")
    inputs = CalibrationInputs(model, pose, PoseStageConfig(), detection, frames=6)
    frames = inputs.detector()
    assert len(frames) == 12  # 6 frames of each of the two clips, every one detected
    assert {f.shape for f in frames} == {(1, 3, 192, 320), (1, 3, 256, 320)}  # 960x540, 768x576
    crops = inputs.pose()
    assert all(c.shape[1:] == (3, 128, 96) and c.dtype == np.float32 for c in crops)
    people = sum(len(c) for c in crops) // 2  # each crop and its mirror image
    assert people >= 6 * 4  # the four figures of the synthetic clip, in each of its frames
    assert inputs.pose() is crops and inputs.detector() is frames  # recorded once


def test_a_detector_that_finds_nobody_cannot_calibrate_the_pose_network():
    model, pose = load_checkpoint(DEMO_POSE)
    blind = DetectorConfig(weights=str(DEMO_DETECTOR), device="cpu", conf=1.0)
    inputs = CalibrationInputs(model, pose, PoseStageConfig(), blind, frames=2)
    with pytest.raises(CalibrationError, match="found nobody in the calibration clips.*bf16 or"):
        inputs.pose()


def test_int8_needs_the_openvino_backend():
    with pytest.raises(ValueError, match="int8 runs on the openvino backend"):
        PoseStageConfig(backend="eager", precision="int8")
    with pytest.raises(ValueError, match="int8 detector runs on the openvino backend"):
        PersonDetector(DetectorConfig(weights=str(DEMO_DETECTOR), backend="torch",
                                      precision="int8", device="cpu"))  # fmt: skip


def test_int8_pipeline_scores_as_the_float_one_on_a_held_out_clip(tmp_path):
    clip = generate_video(tmp_path / "walk.mp4", VideoConfig(960, 540, 15, 3.0, 4), seed=23).video
    coco = video_ground_truth([clip.with_suffix(".json")])
    spec = PipelineSpec(device="cpu")
    scores = {}
    for precision in ("auto", "int8"):
        pipeline = build_pipeline(dataclasses.replace(
            spec, engine=dataclasses.replace(spec.engine, precision=precision),
            detection=dataclasses.replace(spec.detection, precision=precision),
        ))  # fmt: skip
        int8 = precision == "int8"
        assert (pipeline.estimator.describe()["precision"] == "int8") == int8
        assert (pipeline.detector.precision == "int8") == int8
        poses, _, _ = run_live(pipeline, clip)
        scores[precision] = coco_evaluate(coco, coco_results(poses, 0))
    # measured: AP 50.7 (float) and 49.5 (int8)
    assert scores["auto"]["AP"] > 0.45
    assert scores["int8"]["AP"] == pytest.approx(scores["auto"]["AP"], abs=0.02)
    # A browser visitor's other settings: a new int8 engine, calibrated for its own shape.
    cache = PipelineCache(pipeline, DEMO_POSE)
    no_flip = cache.get(cache.key(DEMO_POSE, flip_test=False, decoder="parabola"))
    assert no_flip.estimator.describe()["precision"] == "int8"
    poses, _, _ = run_live(no_flip.sharing_models(), clip)
    assert len(poses) == 45 and sum(len(p) for p in poses) >= 45 * 3


def test_the_demo_runs_int8_on_the_cpu_unless_a_precision_is_chosen():
    default = PipelineSpec(device="cpu")
    chosen = live_precision(default)
    assert (chosen.engine.precision, chosen.detection.precision) == ("int8", "int8")
    for flags in (
        {"engine": PoseStageConfig(precision="bf16")},
        {"engine": PoseStageConfig(backend="eager")},
        {"detection": DetectorConfig(backend="torch")},
    ):
        options = dataclasses.replace(default, **flags)
        assert live_precision(options) is options


def test_the_demo_stays_float_where_int8_cannot_be_calibrated(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no int8 networks kept from before
    blind = PipelineSpec(device="cpu", detection=DetectorConfig(conf=1.0))
    pipeline, options = build_live_pipeline(blind)
    assert options is blind and pipeline.estimator.describe()["precision"] != "int8"
    assert "both networks stay float: the detector found nobody" in caplog.text
