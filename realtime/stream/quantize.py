"""Calibration inputs for int8 networks: what the detector and the pose network are fed while
the pipeline runs the bundled sample clips.

    inputs = CalibrationInputs(model, pose_config, engine_config, detection_config)
    estimator = PoseEstimator(model, pose_config, engine_config, calibration=inputs.pose)
    detector = PersonDetector(detection_config, calibration=inputs.detector)

OpenVINO asks for them only when no quantized network is kept on disk
(`realtime.openvino_runtime`). The first ask runs a float copy of the pipeline (both networks on
OpenVINO in fp32) over the first `CALIBRATION_FRAMES` frames of each clip in
`CALIBRATION_CLIPS`, one frame at a time as from a camera, and records every input of both
networks: letterboxed frames for the detector, normalised crops (and their mirror images) of
the people it found for the pose network. The second ask reuses them. With the demo weights it
takes about half a minute, once.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from torch import nn

from ccm.checkpoint import PoseConfig
from realtime.detect.detector import DetectorConfig, PersonDetector
from realtime.io.sources import open_source
from realtime.pose.config import PoseStageConfig
from realtime.pose.estimator import PoseEstimator
from realtime.samples import SYNTHETIC_WALK, VTEST_SHORT

logger = logging.getLogger(__name__)

# Figures like the demo weights' training data, and real pedestrians (OpenCV's vtest).
CALIBRATION_CLIPS: tuple[Path, ...] = (SYNTHETIC_WALK, VTEST_SHORT)
CALIBRATION_FRAMES = 50


class CalibrationError(ValueError):
    """The calibration clips gave a network nothing to calibrate on."""


class CalibrationInputs:
    """Both networks' inputs on the calibration clips, recorded on the first ask."""

    def __init__(
        self,
        model: nn.Module,
        pose: PoseConfig,
        engine: PoseStageConfig,
        detection: DetectorConfig,
        clips: tuple[Path, ...] = CALIBRATION_CLIPS,
        frames: int = CALIBRATION_FRAMES,
    ) -> None:
        self._float = (
            model,
            pose,
            dataclasses.replace(engine, backend="openvino", precision="fp32"),
            dataclasses.replace(detection, backend="openvino", precision="fp32"),
        )
        self.clips, self.frames = clips, frames
        self._inputs: dict[str, list[np.ndarray]] | None = None

    def pose(self) -> list[np.ndarray]:
        crops = self._recorded()["pose"]
        if not crops:
            raise CalibrationError(
                "the detector found nobody in the calibration clips "
                f"({', '.join(c.name for c in self.clips)}): int8 needs people to calibrate the "
                "pose network on; choose --precision bf16 or fp32"
            )
        return crops

    def detector(self) -> list[np.ndarray]:
        return self._recorded()["detector"]

    def _recorded(self) -> dict[str, list[np.ndarray]]:
        if self._inputs is None:
            self._inputs = self._record()
        return self._inputs

    def _record(self) -> dict[str, list[np.ndarray]]:
        from realtime.stream.pipeline import PosePipeline  # it imports this package's modules

        model, pose, engine, detection = self._float
        logger.info("recording calibration inputs for int8 on %d sample clips", len(self.clips))
        pipeline = PosePipeline(PersonDetector(detection), PoseEstimator(model, pose, engine))
        inputs: dict[str, list[np.ndarray]] = {"pose": [], "detector": []}
        hooks = [
            network.register_forward_pre_hook(
                lambda _module, args, kind=kind: inputs[kind].append(
                    args[0].detach().float().numpy().copy()
                )
            )
            for kind, network in (
                ("pose", pipeline.estimator._network),
                ("detector", pipeline.detector.network),
            )
        ]
        try:
            for clip in self.clips:
                pipeline.reset()
                source = open_source(str(clip), realtime=False)
                try:
                    for i, _ in enumerate(pipeline.stream(source, live=True)):
                        if i + 1 == self.frames:
                            break
                finally:
                    source.close()
        finally:
            for hook in hooks:
                hook.remove()
        logger.info(
            "calibration inputs: %d detector frames, %d crops",
            len(inputs["detector"]), sum(len(batch) for batch in inputs["pose"]),
        )  # fmt: skip
        return inputs
