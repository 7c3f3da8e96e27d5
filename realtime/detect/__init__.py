"""The person detector: `Detector`, the contract the pipeline calls (`detect(images)` on device
frames -> one `Detections` per frame), `PersonDetector` (ultralytics YOLO, class 0) that meets
it, and `interpolate_detections` for the frames between two detected ones."""

from realtime.detect.detector import (
    Detections,
    Detector,
    DetectorConfig,
    PersonDetector,
    interpolate_detections,
)

__all__ = ["Detections", "Detector", "DetectorConfig", "PersonDetector", "interpolate_detections"]
