"""Person detector on a random-weight yolo11n (built from ultralytics' yaml), offline environment,
and boxes from keypoints."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from realtime.offline import FONT_NAME, configure_offline

configure_offline()  # before anything imports ultralytics

from realtime.detect.detector import (  # noqa: E402
    Detections,
    DetectorConfig,
    PersonDetector,
    interpolate_detections,
    shipped_model_yaml,
    trained_size,
)

IMGSZ = 320


class NetworkUsed(AssertionError):
    pass


@pytest.fixture(scope="module")
def network_attempts() -> Iterator[list[str]]:
    """Each socket connection or name lookup tried while this module's tests run (and fails)."""
    attempts: list[str] = []

    def refuse(name: str):
        def fail(*args, **kwargs):
            attempts.append(f"{name}{args[1:] if name.startswith('socket.') else args}")
            raise NetworkUsed(f"network access in a test: {name}")

        return fail

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse("socket.connect"))
        mp.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
        mp.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        mp.setattr(socket, "create_connection", refuse("create_connection"))
        yield attempts


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bus_rgb() -> np.ndarray:
    from ultralytics.utils import ASSETS

    bgr = cv2.imread(str(ASSETS / "bus.jpg"))
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector(network_attempts: list[str]) -> PersonDetector:
    """yolo11n with every conv re-initialised so its output depends on the image.

    Ultralytics' default init makes activations shrink ~10x per layer, so a fresh yolo11n scores
    every anchor the same; Kaiming init keeps them alive, and each of the 80 classes then wins at
    some anchors (class 0 at ~5% of the boxes that survive NMS).
    """
    torch.manual_seed(0)
    config = DetectorConfig(
        weights="yolo11n.yaml",
        conf=0.0,
        iou=0.7,
        imgsz=IMGSZ,
        max_det=3000,
        precision="fp32",
        backend="torch",
    )  # ultralytics' predictor runs fp32 PyTorch on the CPU: the same numbers (OpenVINO's are
    # compared with PyTorch's in tests/realtime/test_openvino_runtime.py)
    det = PersonDetector(config)
    with torch.no_grad():
        for m in det.model.model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:  # not DFL's fixed conv
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        for head in det.model.model.model[-1].one2many["cls_head"]:
            head[-1].weight.mul_(3.0)
            head[-1].bias.fill_(-2.0)
    return det


def with_thresholds(detector: PersonDetector, **changes) -> PersonDetector:
    """The fixture's detector, its re-initialised network shared, with other thresholds."""
    other = copy.copy(detector)
    other.config = dataclasses.replace(detector.config, **changes)
    return other


@pytest.fixture(scope="module")
def full(detector: PersonDetector, bus_rgb: np.ndarray):
    return detector(bus_rgb)


def test_configure_offline_respects_user_values_and_installs_font(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    monkeypatch.delenv("YOLO_AUTOINSTALL", raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")  # the user's explicit choice wins
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="realtime.offline"):
        folder = configure_offline()
    assert folder == tmp_path / "Ultralytics"
    assert os.environ["YOLO_OFFLINE"] == "1"
    assert os.environ["YOLO_AUTOINSTALL"] == "False"
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "True"
    font = folder / FONT_NAME
    assert font.read_bytes()[:4] == b"\x00\x01\x00\x00"  # a TrueType file
    assert font.stat().st_size > 100_000
    # ultralytics was imported at the top of this module with the default folder: say so.
    assert "imported before configure_offline()" in caplog.text

    stamp = font.stat().st_mtime_ns
    assert configure_offline() == folder
    assert font.stat().st_mtime_ns == stamp  # idempotent: nothing rewritten


def test_ultralytics_is_offline_with_sync_off_and_finds_its_font(
    network_attempts: list[str],
) -> None:
    import ultralytics.utils as ul
    from ultralytics.utils.checks import check_font

    assert ul.ONLINE is False
    assert ul.AUTOINSTALL is False
    assert ul.SETTINGS["sync"] is False
    assert Path(check_font("Arial.ttf")) == ul.USER_CONFIG_DIR / FONT_NAME
    assert network_attempts == []


def test_detector_output_shapes_dtypes_and_bounds(full, bus_rgb: np.ndarray) -> None:
    h, w = bus_rgb.shape[:2]
    n = full.boxes.shape[0]
    assert n > 10
    assert full.boxes.shape == (n, 4) and full.scores.shape == (n,)
    assert full.boxes.dtype == torch.float32 and full.scores.dtype == torch.float32
    assert full.boxes.device.type == "cpu" and full.scores.device.type == "cpu"
    x1, y1, x2, y2 = full.boxes.unbind(-1)
    assert bool(((0 <= x1) & (x1 <= x2) & (x2 <= w)).all())
    assert bool(((0 <= y1) & (y1 <= y2) & (y2 <= h)).all())
    assert bool((full.scores[:-1] >= full.scores[1:]).all())  # sorted, best first


def test_detector_keeps_exactly_the_person_boxes_of_an_unfiltered_predict(
    detector: PersonDetector, full, bus_rgb: np.ndarray
) -> None:
    bgr = cv2.cvtColor(bus_rgb, cv2.COLOR_RGB2BGR)
    (everything,) = detector.model.predict(
        bgr, conf=0.0, iou=0.7, imgsz=IMGSZ, max_det=3000, verbose=False, save=False
    )
    cls = everything.boxes.cls
    assert cls.unique().numel() > 20  # the unfiltered model finds many classes ...
    assert 10 < int((cls == 0).sum()) < len(cls)  # ... persons among them
    person = cls == 0
    assert torch.equal(full.boxes, everything.boxes.xyxy[person].float())
    assert torch.equal(full.scores, everything.boxes.conf[person].float())


def test_detector_respects_confidence_threshold_and_max_det(
    detector: PersonDetector, full, bus_rgb: np.ndarray
) -> None:
    thr = float(full.scores.median())
    strict = with_thresholds(detector, conf=thr)(bus_rgb)
    keep = full.scores > thr
    assert 0 < len(strict.scores) < len(full.scores)
    assert bool((strict.scores > thr).all())
    assert torch.equal(strict.boxes, full.boxes[keep])

    top = with_thresholds(detector, max_det=7)(bus_rgb)
    assert torch.equal(top.boxes, full.boxes[:7])
    assert torch.equal(top.scores, full.scores[:7])
    assert detector.config.max_det == 3000 and detector.config.conf == 0.0  # original unchanged


def test_detect_batch_matches_single_frames(detector: PersonDetector, bus_rgb: np.ndarray) -> None:
    mirrored = np.ascontiguousarray(bus_rgb[:, ::-1])
    batch = detector.detect_batch([bus_rgb, mirrored])
    assert detector.detect_batch([]) == []
    for frame, got in zip([bus_rgb, mirrored], batch, strict=True):
        one = detector(frame)
        assert got.boxes.shape == one.boxes.shape
        torch.testing.assert_close(got.boxes, one.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(got.scores, one.scores, atol=1e-5, rtol=0)


def test_detector_ran_without_network(network_attempts: list[str], full) -> None:
    assert network_attempts == []


def test_detector_leaves_the_torch_thread_count_alone(bus_rgb: np.ndarray) -> None:
    # ultralytics sets cpu_count - 1 threads when its predictor starts on the CPU; the pose
    # network shares the process, so a fresh detector's first call must not change it.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        PersonDetector(DetectorConfig(weights="yolo11n.yaml", imgsz=IMGSZ, device="cpu"))(bus_rgb)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_missing_weights_raise_file_not_found_with_a_hint(tmp_path: Path) -> None:
    for name in (tmp_path / "yolo11n.pt", "no_such_model.yaml", "https://example.com/yolo11n.pt"):
        hint = rf"not found.*python app\.py weights fetch {re.escape(Path(name).name)}"
        with pytest.raises(FileNotFoundError, match=hint):
            PersonDetector(DetectorConfig(weights=name))
    assert shipped_model_yaml("yolo11n.yaml").name == "yolo11.yaml"
    assert shipped_model_yaml("no_such_model.yaml") is None
    assert shipped_model_yaml("yolo11n.pt") is None


def test_bad_config_and_frames_are_refused(detector: PersonDetector, bus_rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="imgsz must be a positive multiple of 32"):
        DetectorConfig(imgsz=300)
    with pytest.raises(ValueError, match=r"conf must be in \[0, 1\]"):
        DetectorConfig(conf=1.5)
    with pytest.raises(ValueError, match="max_det must be at least 1"):
        DetectorConfig(max_det=0)
    with pytest.raises(ValueError, match=r"frame 0 must be an \(H, W, 3\) uint8 RGB array"):
        detector(bus_rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"frame 1 must be an \(H, W, 3\) uint8 RGB array"):
        detector.detect_batch([bus_rgb, bus_rgb[..., 0]])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_detector_fp16_on_cuda_returns_float32_on_the_gpu(bus_rgb: np.ndarray) -> None:
    config = DetectorConfig(weights="yolo11n.yaml", conf=0.0, imgsz=IMGSZ, device="cuda")
    det = PersonDetector(config)
    out = det(bus_rgb)
    assert next(det.network.parameters()).dtype == torch.float16
    assert out.boxes.device.type == "cuda" and out.boxes.dtype == torch.float32
    assert out.scores.device.type == "cuda" and out.scores.dtype == torch.float32


def test_input_size_defaults_to_the_size_the_weights_were_trained_at(tmp_path) -> None:
    assert trained_size({"imgsz": 320}) == 320
    assert trained_size({"imgsz": [480, 640]}) == 640
    assert trained_size({"imgsz": 300}) == 320  # rounded up to the network's stride
    assert trained_size({}) == 640  # a model yaml records nothing: ultralytics' default
    from ultralytics import YOLO

    # A weight file records the training size; the detector runs at it unless told otherwise.
    model = YOLO("yolo11n.yaml")
    model.ckpt = {"train_args": {"task": "detect", "imgsz": 256}}  # as training writes it
    model.save(tmp_path / "small.pt")
    saved = DetectorConfig(tmp_path / "small.pt", device="cpu", trust=True)  # our own file
    assert PersonDetector(saved).config.imgsz == 256
    told = dataclasses.replace(saved, imgsz=IMGSZ)
    assert PersonDetector(told).config.imgsz == IMGSZ
    assert PersonDetector(DetectorConfig("yolo11n.yaml", device="cpu")).config.imgsz == 640


@pytest.mark.parametrize("user_value", [None, "1"])
def test_configure_offline_keeps_torch_threads_and_the_users_omp_setting(
    user_value: str | None,
) -> None:
    # Importing ultralytics sets OMP_NUM_THREADS=1, which would pin torch to one thread.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if user_value is not None:
        env["OMP_NUM_THREADS"] = user_value
    probe = "import os, torch; print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))"
    plain = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    offline = subprocess.run(
        [sys.executable, "-c", "from realtime.offline import configure_offline\n"
         "configure_offline()\n" + probe],
        env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.split() == plain.stdout.split()
    assert plain.stdout.split()[1] == str(user_value)


def test_detections_between_two_frames_follow_the_people_both_frames_show():
    before = Detections(
        torch.tensor([[0.0, 0, 10, 20], [100, 0, 110, 20]]), torch.tensor([0.9, 0.6])
    )
    # The first person moved 4 px; the second left; a third came in, overlapping nobody.
    after = Detections(
        torch.tensor([[4.0, 0, 14, 20], [300, 300, 310, 320]]), torch.tensor([0.7, 0.8])
    )
    quarter = interpolate_detections(before, after, 0.25)  # the people of the nearer frame
    torch.testing.assert_close(quarter.boxes, torch.tensor([[1.0, 0, 11, 20], [100, 0, 110, 20]]))
    torch.testing.assert_close(quarter.scores, torch.tensor([0.85, 0.6]))
    late = interpolate_detections(before, after, 0.75)  # sorted by score
    torch.testing.assert_close(late.boxes, torch.tensor([[300.0, 300, 310, 320], [3, 0, 13, 20]]))
    torch.testing.assert_close(late.scores, torch.tensor([0.8, 0.75]))
    assert interpolate_detections(before, after, 0.0).boxes.equal(before.boxes)
    # Only mutual best matches move: the second box's best match prefers the first box.
    crowd = Detections(torch.tensor([[0.0, 0, 10, 20], [3, 0, 13, 20]]), torch.tensor([0.9, 0.8]))
    one = Detections(torch.tensor([[1.0, 0, 11, 20]]), torch.tensor([0.9]))
    half = interpolate_detections(crowd, one, 0.5)
    torch.testing.assert_close(half.boxes, torch.tensor([[0.5, 0, 10.5, 20], [3, 0, 13, 20]]))
    nobody = Detections(torch.zeros(0, 4), torch.zeros(0))
    assert interpolate_detections(before, nobody, 0.5).boxes.equal(before.boxes)
    assert len(interpolate_detections(before, nobody, 0.6).boxes) == 0
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        interpolate_detections(before, after, 1.5)
