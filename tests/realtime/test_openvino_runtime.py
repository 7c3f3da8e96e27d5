"""The openvino backend: a torch module run by OpenVINO gives the module's numbers, is converted
once and read from its cache after, and both networks of the pipeline run on it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import pytest
import torch
from torch import nn
from toys import blob_frame

from realtime.detect.detector import DetectorConfig, PersonDetector
from realtime.openvino_runtime import OpenVinoNetwork, cache_key
from realtime.pose.config import PoseStageConfig
from realtime.pose.estimator import PoseEstimator
from realtime.samples import SYNTHETIC_WALK

ROOT = Path(__file__).parents[2]
DEMO_POSE = ROOT / "weights" / "demo-ccm-mobilenetv2-128x96.safetensors"
DEMO_DETECTOR = ROOT / "weights" / "demo-yolo11n-person.pt"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)), x.mean()  # a second output, which is dropped


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny().eval()


def test_a_converted_module_computes_what_it_does_for_any_batch(tiny, tmp_path):
    network = OpenVinoNetwork(tiny, (2, 3, 8, 6), dynamic=(0,), cache_dir=tmp_path)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 8, 6)
        out = network(x)
        assert out.shape == (batch, 4, 8, 6) and out.dtype == torch.float32
        torch.testing.assert_close(out, tiny(x)[0].detach(), rtol=0, atol=1e-5)


def test_the_conversion_is_cached_by_weights_and_shape(tiny, tmp_path, monkeypatch):
    import openvino

    OpenVinoNetwork(tiny, (2, 3, 8, 6), cache_dir=tmp_path)
    cached = sorted(p.name for p in tmp_path.iterdir())
    key = cache_key(tiny, (2, 3, 8, 6), "network")
    assert cached == [f"{key}.bin", f"{key}.xml"]

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    x = torch.randn(3, 3, 8, 6)
    again = OpenVinoNetwork(tiny, (2, 3, 8, 6), cache_dir=tmp_path)  # read from the cache
    torch.testing.assert_close(again(x), tiny(x)[0].detach(), rtol=0, atol=1e-5)
    with torch.no_grad():
        tiny.conv.bias += 1  # other weights: another key, converted anew
    assert cache_key(tiny, (2, 3, 8, 6), "network") != key
    with pytest.raises(RuntimeError, match="could not be converted .*converted again"):
        OpenVinoNetwork(tiny, (2, 3, 8, 6), cache_dir=tmp_path)


def test_a_broken_or_unwritable_cache_is_converted_again(tiny, tmp_path, caplog):
    x = torch.randn(2, 3, 8, 6)
    OpenVinoNetwork(tiny, (2, 3, 8, 6), cache_dir=tmp_path)
    (xml,) = tmp_path.glob("*.xml")
    xml.write_text("<net")  # cut off
    again = OpenVinoNetwork(tiny, (2, 3, 8, 6), cache_dir=tmp_path)
    torch.testing.assert_close(again(x), tiny(x)[0].detach(), rtol=0, atol=1e-5)
    assert "converting again" in caplog.text and xml.read_text().startswith("<?xml")
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache folder should be
    network = OpenVinoNetwork(tiny, (2, 3, 8, 6), cache_dir=blocked / "openvino")
    torch.testing.assert_close(network(x), tiny(x)[0].detach(), rtol=0, atol=1e-5)
    assert "could not keep the converted network" in caplog.text


def test_threads_share_one_network(tiny, tmp_path):
    network = OpenVinoNetwork(tiny, (2, 3, 8, 6), cache_dir=tmp_path)
    inputs = [torch.full((2, 3, 8, 6), float(i)) for i in range(4)]
    outputs: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        for _ in range(20):
            outputs[i] = network(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(inputs):
        torch.testing.assert_close(outputs[i], tiny(x)[0].detach(), rtol=0, atol=1e-5)


class Untraceable(nn.Module):
    def forward(self, x):
        return {"x": x, "mixed": [x]}  # a tensor and a list in one dict: the tracer refuses it


def test_a_network_openvino_cannot_convert_is_named_with_the_way_around(tmp_path):
    with pytest.raises(
        RuntimeError,
        match=r"^the odd network could not be converted for OpenVINO \(.+\); "
        r"`--backend eager` runs it on PyTorch$",
    ):
        OpenVinoNetwork(Untraceable(), (1, 3, 8, 6), name="odd", cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written in the cache


def test_bad_openvino_settings_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="openvino precision"):
        OpenVinoNetwork(tiny, (1, 3, 8, 6), precision="fp16", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="runs on the CPU, not cuda"):
        PoseStageConfig(backend="openvino", device="cuda")
    with pytest.raises(ValueError, match="unknown detector backend"):
        DetectorConfig(backend="onnx")


def test_auto_is_openvino_on_the_cpu_and_eager_on_cuda():
    assert PoseStageConfig().resolved_backend == "openvino"
    assert PoseStageConfig(device="cuda").resolved_backend == "eager"
    assert PoseStageConfig(backend="eager").resolved_backend == "eager"


def _demo_estimator(tmp_path, **kw) -> PoseEstimator:
    from ccm.checkpoint import load_checkpoint

    model, pose = load_checkpoint(DEMO_POSE)
    return PoseEstimator(model, pose, PoseStageConfig(cache_dir=tmp_path, **kw))


def test_the_pose_network_on_openvino_gives_pytorchs_keypoints(tmp_path):
    frame = blob_frame([(200.0, 180.0), (330.0, 160.0)])
    boxes = torch.tensor([[150.0, 100.0, 250.0, 260.0], [280.0, 60.0, 380.0, 260.0]])
    eager = _demo_estimator(tmp_path, backend="eager", precision="fp32")
    openvino = _demo_estimator(tmp_path, backend="openvino", precision="fp32")
    assert openvino.describe()["backend"] == "openvino"
    expected, got = eager(frame, boxes), openvino(frame, boxes)
    torch.testing.assert_close(got[..., :2], expected[..., :2], rtol=0, atol=0.05)
    torch.testing.assert_close(got[..., 2], expected[..., 2], rtol=0, atol=1e-3)
    # bf16 inside OpenVINO (on a CPU that has it): still the same joints, a little off
    bf16 = _demo_estimator(tmp_path, backend="openvino", precision="bf16")(frame, boxes)
    assert (bf16[..., :2] - expected[..., :2]).norm(dim=-1).median() < 1.0


def test_a_call_may_skip_the_flip_test_and_then_matches_no_flip(tmp_path):
    frame = blob_frame([(200.0, 180.0)])
    boxes = torch.tensor([[150.0, 100.0, 250.0, 260.0]])
    flipping = _demo_estimator(tmp_path, precision="fp32")
    plain = _demo_estimator(tmp_path, precision="fp32", flip_test=False)
    assert flipping.flips() is True and flipping.flips(False) is False
    assert plain.flips(True) is False  # a call cannot turn on what the config turned off
    skipped = flipping(frame, boxes, flip=False)
    torch.testing.assert_close(skipped, plain(frame, boxes), rtol=0, atol=0)
    assert not torch.equal(flipping(frame, boxes), skipped)


def _first_frame() -> torch.Tensor:
    capture = cv2.VideoCapture(str(SYNTHETIC_WALK))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None]


@pytest.mark.parametrize("weights", [str(DEMO_DETECTOR), "yolo26n.yaml"])
def test_the_detector_on_openvino_gives_pytorchs_predictions(weights):
    frame = _first_frame()
    torch.manual_seed(0)  # the yaml builds random weights: the same ones for both
    config = DetectorConfig(weights=weights, imgsz=320, backend="torch", device="cpu")
    torch_detector = PersonDetector(config)
    openvino = PersonDetector(dataclasses.replace(config, backend="openvino"))
    openvino.model.model.load_state_dict(torch_detector.model.model.state_dict())
    assert openvino.backend == "openvino"
    batch = torch_detector._letterbox(frame)
    with torch.inference_mode():
        expected = torch_detector.network(batch)
        expected = expected[0] if isinstance(expected, tuple | list) else expected
        got = openvino.network(batch)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-2)
    if weights == str(DEMO_DETECTOR):  # trained: people found, the same boxes
        (want,), (have,) = torch_detector.detect(frame), openvino.detect(frame)
        assert len(want.boxes) == 4
        torch.testing.assert_close(have.boxes, want.boxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(have.scores, want.scores, rtol=0, atol=1e-5)


def test_int8_is_quantized_on_the_calibration_inputs_once_and_kept(tiny, tmp_path):
    torch.manual_seed(1)
    samples = [torch.randn(2, 3, 8, 6).numpy() for _ in range(16)]
    asked = []

    def calibration():
        asked.append(1)
        return samples

    network = OpenVinoNetwork(tiny, (2, 3, 8, 6), precision="int8", cache_dir=tmp_path,
                              calibration=calibration)  # fmt: skip
    x = torch.randn(4, 3, 8, 6)
    want, got = tiny(x)[0].detach(), network(x)
    error = (got - want).abs()  # measured: max 0.062, mean 0.0051 of outputs up to 1.7
    assert 1e-3 < error.mean() < 0.01 and error.max() < 0.1  # int8 arithmetic, and close
    key = cache_key(tiny, (2, 3, 8, 6), "network")
    assert "FakeQuantize" in (tmp_path / f"{key}-int8-calibration1.xml").read_text()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{key}.bin", f"{key}.xml", f"{key}-int8-calibration1.bin",
                            f"{key}-int8-calibration1.xml"])  # fmt: skip
    again = OpenVinoNetwork(tiny, (2, 3, 8, 6), precision="int8", cache_dir=tmp_path,
                            calibration=calibration)  # fmt: skip
    assert len(asked) == 1  # read from the cache: not calibrated again
    torch.testing.assert_close(again(x), got, rtol=0, atol=0)
    with pytest.raises(ValueError, match="int8 needs calibration inputs"):
        OpenVinoNetwork(tiny, (2, 3, 8, 6), precision="int8", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no calibration inputs for the empty network"):
        OpenVinoNetwork(tiny, (2, 3, 8, 6), precision="int8", name="empty",
                        cache_dir=tmp_path, calibration=list)  # fmt: skip


_NETWORKS_COME_AND_GO = """
import gc, os, signal, sys
import numpy as np, torch
from torch import nn
from realtime.openvino_runtime import OpenVinoNetwork

cache = sys.argv[1]
torch.manual_seed(0)
module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
samples = [np.random.default_rng(i).normal(size=(2, 3, 8, 6)).astype(np.float32) for i in range(8)]
first = OpenVinoNetwork(module, (2, 3, 8, 6), cache_dir=cache)
second = OpenVinoNetwork(module, (2, 3, 8, 6), precision="int8", cache_dir=cache,
                         calibration=lambda: samples)
x = torch.randn(2, 3, 8, 6)
first(x), second(x)
del first; gc.collect()  # networks go in the order they came, as a cache evicts them
del second; gc.collect()
caught = []
signal.signal(signal.SIGUSR1, lambda *_: caught.append(1))
os.kill(os.getpid(), signal.SIGUSR1)  # a Python handler runs on this (the main) thread
print("caught", len(caught))
"""


def test_networks_that_come_and_go_leave_signal_handlers_working(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's signal stack per Core; networks dropped in the
    order they were made used to leave a freed one, and the next Python signal handler (Ctrl-C,
    a DataLoader worker's SIGCHLD) crashed the process with SIGSEGV."""
    done = subprocess.run(
        [sys.executable, "-c", _NETWORKS_COME_AND_GO, str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "caught 1"
