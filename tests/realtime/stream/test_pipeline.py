"""The pipeline's own logic on a perfect toy pose model: detection every N frames (and after a
lost track), the live flip test schedule, score and box filtering, micro-batches, reset, broken
inputs, and its one device->host copy."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from toys import DotFinder, SpreadFinder, blob_frame

from ccm.checkpoint import PoseConfig
from ccm.geometry import boxes_from_keypoints
from realtime.detect.detector import Detections, Detector
from realtime.io.frames import Frame
from realtime.pose.config import PoseStageConfig
from realtime.pose.estimator import PoseEstimator
from realtime.stream.pipeline import PipelineConfig, PosePipeline
from realtime.temporal.fusion import TemporalConfig, TemporalFusion
from realtime.temporal.stage import TemporalStage

POSE = PoseConfig("ccm_mobilenetv2", input_size=(128, 96))

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[3]
POINTS = [(120.3, 150.6), (300.8, 200.2), (401.5, 95.0)]


def box(x: float, y: float) -> list[float]:
    return [x - 40, y - 70, x + 50, y + 60]


class FakeDetector(Detector):
    """Fixed boxes and scores for every frame; counts the frames it saw."""

    device = torch.device("cpu")

    def __init__(self, boxes: list[list[float]], scores: list[float]) -> None:
        self.boxes = torch.tensor(boxes)
        self.scores = torch.tensor(scores)
        self.calls = 0

    def detect(self, images: torch.Tensor) -> list[Detections]:
        assert images.shape[1:] == (3, 360, 480) and images.dtype == torch.uint8
        self.calls += len(images)
        return [Detections(self.boxes.clone(), self.scores.clone()) for _ in images]


def frame(index: int, points=POINTS, shift: float = 0.0) -> Frame:
    moved = [(x + shift, y) for x, y in points]
    image = blob_frame(moved)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Frame(index, index / 10, np.ascontiguousarray(image), 0.0)


def pipeline(detector, config=None, network=None, temporal=None) -> PosePipeline:
    stage = PoseStageConfig(backend="eager", decoder="dark", blur_kernel=0)
    estimator = PoseEstimator(network or DotFinder(), POSE, stage)
    return PosePipeline(detector, estimator, temporal, config or PipelineConfig())


def test_every_person_is_found_where_the_frame_shows_them():
    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    result = pipeline(det)(frame(0))
    assert len(result.poses) == 3 and result.people == 3 and result.batch == 1
    # Best first: the person score is the box score times the mean keypoint score.
    assert np.all(np.diff(result.poses.scores.numpy()) <= 0)
    found = result.poses.keypoints[:, 0, :2].numpy()
    for p in POINTS:
        assert np.linalg.norm(found - np.array(p), axis=1).min() < 0.2
    torch.testing.assert_close(result.poses.boxes, torch.tensor([box(*p) for p in POINTS]))
    assert set(result.timings) == {"detect", "crop", "pose", "refine", "fuse"}


def test_detection_every_n_frames_takes_boxes_from_the_previous_poses():
    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    pipe = pipeline(det, PipelineConfig(det_every=3, nms="none"), network=SpreadFinder())
    results = [pipe(frame(i, shift=2.0 * i)) for i in range(7)]
    assert det.calls == 3  # frames 0, 3 and 6
    for i in (1, 2, 4, 5):
        expected = boxes_from_keypoints(
            results[i - 1].poses.keypoints, 0.3, image_size=(360, 480)
        ).numpy()
        got = results[i].poses.boxes.numpy()
        assert len(got) == 3
        # The boxes of this frame are those of the last poses (in the order of their scores).
        assert (
            min(np.abs(got - expected[list(p)]).max() for p in itertools.permutations(range(3)))
            < 1e-4
        )
        # The moving blobs are followed through the frames without detection.
        found = results[i].poses.keypoints[:, 0, :2].numpy()
        for x, y in POINTS:
            assert np.linalg.norm(found - np.array((x + 2.0 * i, y)), axis=1).min() < 0.3


def test_people_below_the_score_threshold_and_broken_boxes_are_dropped():
    boxes = [box(*POINTS[0]), box(*POINTS[1]), [np.nan, 0, 50, 50], [10, 10, 10.5, 300],
             [-np.inf, 5, np.inf, 400]]  # fmt: skip
    det = FakeDetector(boxes, [0.9, 0.01, 0.9, 0.9, 0.9])
    result = pipeline(det, PipelineConfig(min_pose_score=0.05, nms="none"))(frame(0))
    # The second person scores 0.01 x ~0.9; the NaN box and the half-pixel-wide one take no part.
    # The infinite box is clipped to the frame (a region that holds every blob).
    kept = result.poses.boxes.numpy()
    assert len(kept) == 2
    np.testing.assert_allclose(kept[0], box(*POINTS[0]), atol=1e-5)
    np.testing.assert_allclose(kept[1], [0, 5, 480, 360], atol=1e-5)
    assert np.isfinite(result.poses.keypoints.numpy()).all()


def test_a_network_that_gives_nan_is_an_error_not_an_empty_frame():
    class Broken(DotFinder):
        def forward(self, x):
            return super().forward(x) * torch.nan

    det = FakeDetector([box(*POINTS[0])], [0.9])
    with pytest.raises(RuntimeError, match="NaN or infinite keypoints"):
        pipeline(det, network=Broken())(frame(0))


def test_gray_and_rgba_frames_are_posed_like_rgb():
    det = FakeDetector([box(*POINTS[0])], [0.9])
    rgb = frame(0)
    plain = pipeline(det)(rgb).poses.keypoints
    rgba = np.concatenate([rgb.image, np.full((*rgb.image.shape[:2], 1), 255, np.uint8)], 2)
    torch.testing.assert_close(pipeline(det)(Frame(0, 0.0, rgba, 0.0)).poses.keypoints, plain)
    gray = rgb.image[..., 0]  # the blobs are in the red channel; gray copies it to all three
    out = pipeline(det)(Frame(0, 0.0, gray, 0.0)).poses.keypoints
    assert (out[0, 0, :2] - torch.tensor(POINTS[0])).norm() < 0.2
    with pytest.raises(ValueError, match=r"frame 0: expected a uint8 image array"):
        pipeline(det)(Frame(0, 0.0, rgb.image.astype(np.float32), 0.0))


def test_micro_batches_give_the_results_of_one_frame_at_a_time():
    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    frames = [frame(i, shift=3.0 * i) for i in range(5)]
    temporal = TemporalConfig()
    one = pipeline(
        det, PipelineConfig(det_every=1, batch_size=1), temporal=TemporalFusion(temporal)
    )
    many = pipeline(
        det, PipelineConfig(det_every=1, batch_size=4), temporal=TemporalFusion(temporal)
    )
    single = list(one.stream(frames))
    batched = list(many.stream(frames))
    assert [r.batch for r in batched] == [4, 4, 4, 4, 1]
    for a, b in zip(single, batched, strict=True):
        assert a.frame.index == b.frame.index
        torch.testing.assert_close(a.poses.keypoints, b.poses.keypoints, rtol=0, atol=1e-4)
        assert torch.equal(a.poses.track_ids, b.poses.track_ids)
        assert list(b.poses.track_ids) == [0, 1, 2]


def test_reset_forgets_the_stream():
    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    pipe = pipeline(det, PipelineConfig(det_every=5), SpreadFinder(), TemporalFusion())
    pipe(frame(0))
    pipe(frame(1))
    assert det.calls == 1
    pipe.reset()
    result = pipe(frame(0))  # a new video: pts starts again, and the detector runs again
    assert det.calls == 2 and list(result.poses.track_ids) == [0, 1, 2]


def test_streams_of_several_sessions_share_one_batch():
    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    pipe = pipeline(det)
    a, b = pipe.new_stream(TemporalFusion()), pipe.new_stream(TemporalFusion(), det_every=2)
    out = pipe.process([frame(0), frame(0, shift=5.0)], [a, b])
    assert [r.batch for r in out] == [2, 2]
    assert a.frames == b.frames == 1 and det.calls == 2
    # Two frames of one stream in a call: the last is detected, the first interpolated.
    out = pipe.process([frame(1, shift=5.0), frame(2, shift=5.0)], [b, b])
    assert det.calls == 3 and b.frames == 3 and b.detected_frame == 2
    torch.testing.assert_close(out[0].poses.boxes, det.boxes)


def test_after_detection_the_frame_reaches_the_host_in_one_copy(monkeypatch):
    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    pipe = pipeline(det, PipelineConfig(nms="softnms"))
    calls: list[str] = []
    original_detect = pipe._detect

    def detect(*args):
        out = original_detect(*args)
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, _counting(real, name, calls))
        return out

    monkeypatch.setattr(pipe, "_detect", detect)
    result = pipe(frame(0))
    monkeypatch.undo()
    assert len(result.poses) == 3
    # On the CPU: zero-copy views of the frame and the crops' affine maps for OpenCV's warp,
    # then the packed result, once; nothing else asked the device.
    assert calls == ["numpy", "numpy", "numpy"]


def test_with_the_real_detector_only_the_detected_frame_waits_and_only_twice():
    # What would make a CUDA host wait, counted on the CPU: the detector's candidate mask and
    # torchvision's NMS on the detected frame (ultralytics' own NMS waits four times), nothing
    # for the frames between detections, the pose stage or the duplicate suppression.
    from realtime.bench.counters import SyncOps
    from realtime.detect.detector import DetectorConfig, PersonDetector

    weights = ROOT / "weights" / "demo-yolo11n-person.pt"
    det = PersonDetector(DetectorConfig(weights, conf=0.0, max_det=3, imgsz=320, device="cpu"))
    pipe = pipeline(det, PipelineConfig(det_every=3, min_pose_score=0.0))
    pipe(frame(0))
    with SyncOps() as ops:
        results = pipe.process([frame(i) for i in range(1, 4)])  # 1, 2 between; 3 detected
    assert [len(r.poses) for r in results] == [2, 2, 2]  # of the 3 boxes, 2 separate people
    assert ops.found == ["nonzero", "nms"]


def _counting(real, name, calls):
    def wrapper(self, *args, **kwargs):
        calls.append(name)
        return real(self, *args, **kwargs)

    return wrapper


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_pipeline_syncs_only_for_its_one_copy():
    import warnings

    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    det.boxes, det.scores = det.boxes.cuda(), det.scores.cuda()  # as a GPU detector returns
    estimator = PoseEstimator(
        DotFinder(), POSE, PoseStageConfig(device="cuda", decoder="dark", blur_kernel=0)
    )
    pipe = PosePipeline(det, estimator, TemporalFusion(), PipelineConfig())
    pipe(frame(0))  # warm-up: allocations, pinned buffers
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = pipe(frame(1, shift=1.0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, syncs  # the copy of the packed result
    assert len(result.poses) == 3


def test_unused_config_value_is_refused():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PipelineConfig(batch_size=0)
    assert PoseConfig("ccm_mobilenetv2").heatmap_mapping == "pixel-center"


def test_frames_without_detection_take_the_boxes_the_temporal_stage_predicts():
    class Predicting(TemporalStage):
        """A temporal stage that passes poses through and predicts fixed boxes."""

        method = "none"

        def __init__(self) -> None:
            self.asked: list[float] = []

        def reset(self) -> None:
            self.asked.clear()

        def __call__(self, poses):
            return poses

        def predicted_boxes(self, pts, score_thr=0.3, image_size=None):
            self.asked.append(pts)  # one box per person of the last frame, moved on by 5 px
            return torch.tensor([box(x + 5, y) for x, y in POINTS])

    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    temporal = Predicting()
    pipe = pipeline(det, PipelineConfig(det_every=2, nms="none"), temporal=temporal)
    pipe(frame(0))
    second = pipe(frame(1))
    assert det.calls == 1 and temporal.asked == [0.1]
    kept = np.array(sorted(second.poses.boxes.numpy().tolist()))
    np.testing.assert_allclose(kept, sorted(box(x + 5, y) for x, y in POINTS), atol=1e-4)


class ScriptedDetector(Detector):
    """Given boxes for each frame detected, in order; keeps the (H, W, 3) images it saw."""

    device = torch.device("cpu")

    def __init__(self, boxes: list[list[list[float]]], scores: list[float]) -> None:
        self.boxes = [torch.tensor(b) for b in boxes]
        self.scores = torch.tensor(scores)
        self.images: list[np.ndarray] = []

    def detect(self, images: torch.Tensor) -> list[Detections]:
        found = []
        for image in images:
            self.images.append(image.permute(1, 2, 0).numpy())
            found.append(Detections(self.boxes[len(self.images) - 1], self.scores.clone()))
        return found


def moving_boxes(i: int, step: float = 3.0) -> list[list[float]]:
    return [box(x + step * i, y) for x, y in POINTS]


def test_a_file_is_detected_every_third_frame_and_boxes_between_are_interpolated():
    frames = [frame(i, shift=3.0 * i) for i in range(8)]
    detected = (0, 3, 6, 7)  # every third frame, and the file's last one
    det = ScriptedDetector([moving_boxes(i) for i in detected], [0.9, 0.8, 0.7])
    pipe = pipeline(det, PipelineConfig(nms="none", batch_size=4), network=SpreadFinder())
    results = list(pipe.stream(frames))
    # Batches of about 4 frames end on a detected frame: 0-3, then 4-7 (the file ends at 7).
    assert [r.batch for r in results] == [4] * 8
    seen = [next(i for i, f in enumerate(frames) if np.array_equal(f.image, image))
            for image in det.images]  # fmt: skip
    assert seen == list(detected)
    for i, result in enumerate(results):
        # Frame 1 is a third of the way from frame 0's boxes to frame 3's: 1 px a frame.
        torch.testing.assert_close(
            result.poses.boxes, torch.tensor(moving_boxes(i)), rtol=0, atol=1e-4
        )
        found = result.poses.keypoints[:, 0, :2].numpy()
        for x, y in POINTS:
            assert np.linalg.norm(found - np.array((x + 3.0 * i, y)), axis=1).min() < 0.3


def test_by_default_a_file_is_detected_every_third_frame_and_a_camera_every_frame():
    frames = [frame(i) for i in range(7)]
    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    pipe = pipeline(det, PipelineConfig(batch_size=2))
    assert len(list(pipe.stream(frames))) == 7 and det.calls == 3  # frames 0, 3 and 6
    pipe.reset()
    assert len(list(pipe.stream(frames, live=True))) == 7 and det.calls == 10
    assert pipe.state.det_every == 1 and PipelineConfig().det_every is None


def test_frames_read_before_a_source_fails_are_posed_before_the_error():
    def failing():
        yield from (frame(i) for i in range(5))
        raise OSError("the data ends at frame 5")

    det = FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])
    results = []
    with pytest.raises(OSError, match="ends at frame 5"):
        for result in pipeline(det, PipelineConfig(det_every=1, batch_size=4)).stream(failing()):
            results.append(result)
    # Frames 0-3, then 4 (read in the batch that met the error), each with its people.
    assert [r.frame.index for r in results] == [0, 1, 2, 3, 4]
    assert [len(r.poses) for r in results] == [3] * 5


def three_people() -> FakeDetector:
    return FakeDetector([box(*p) for p in POINTS], [0.9, 0.8, 0.7])


def test_the_frame_after_a_lost_track_is_detected():
    shown = [POINTS, POINTS[:2], POINTS[:2], POINTS[:2], POINTS[:2], POINTS[:2]]
    det = three_people()
    pipe = pipeline(det, PipelineConfig(det_every=3), network=SpreadFinder())
    frames = (frame(i, p) for i, p in enumerate(shown))
    counts = [len(r.poses) for r in pipe.stream(frames, live=True)]
    # Frame 1's boxes come from frame 0's three tracks; one finds nobody: frame 2 is detected
    # (the fixed detector's third box finds nobody either), then frame 3 as every 3rd.
    assert counts == [3, 2, 2, 2, 2, 2]
    assert det.calls == 3 and pipe.state.detections == 3
    pipe.reset()
    det.calls = 0
    list(pipe.stream((frame(i) for i in range(6)), live=True))  # nobody lost: frames 0 and 3
    assert det.calls == 2 and pipe.state.detections == 2 and not pipe.state.lost


@pytest.mark.parametrize(
    ("policy", "flipped"),
    [
        ("always", [1] * 6),
        ("between", [0, 1, 1, 0, 1, 1]),
        ("alternate", [0, 1, 0, 1, 0, 1]),
        ("never", [0] * 6),
    ],  # fmt: skip
)
def test_live_flip_chooses_the_frames_that_get_the_flip_test(policy, flipped):
    pipe = pipeline(three_people(), PipelineConfig(det_every=3, live_flip=policy), SpreadFinder())
    seen = []
    for i in range(6):
        before = pipe.state.flips
        (result,) = pipe.stream([frame(i)], live=True)
        seen.append(pipe.state.flips - before)
        assert len(result.poses) == 3
    assert seen == flipped
    assert pipe.state.detections == 2 and pipe.state.frames == 6


def test_a_file_keeps_the_flip_test_on_every_frame_whatever_live_flip_says():
    pipe = pipeline(three_people(), PipelineConfig(det_every=3, live_flip="never", batch_size=2))
    assert len(list(pipe.stream(frame(i) for i in range(6)))) == 6
    assert pipe.state.flips == 6 and pipe.state.detections == 3  # frames 0, 3 and 5 (the end)


def test_an_unknown_live_flip_is_refused():
    with pytest.raises(ValueError, match="unknown live_flip 'sometimes'"):
        PipelineConfig(live_flip="sometimes")
