"""`python app.py video` end to end, the way a user runs it, on the bundled sample clip."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ccm.checkpoint import PoseConfig, save_checkpoint
from realtime.samples import SYNTHETIC_WALK, SYNTHETIC_WALK_GT, VTEST_SHORT
from train.video_eval import evaluate_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pose_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = PoseConfig("ccm_mobilenetv2", input_size=(128, 96))
    return save_checkpoint(
        tmp_path_factory.mktemp("weights") / "tiny.safetensors", config.build_model(), config
    )


def run_app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # A random-weight YOLO scores every box alike: conf 0 and --det-max 3 give three "people".
    detector = [
        "--detector",
        "yolo11n.yaml",
        "--det-conf",
        "0",
        "--det-max",
        "3",
        "--det-size",
        "320",
    ]
    command = [
        sys.executable,
        str(ROOT / "app.py"),
        *args,
        *detector,
        "--min-score",
        "0",
        "--device",
        "cpu",
    ]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_video_command_processes_good_input_and_reports_bad_ones(tmp_path, pose_checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / "good.mp4"
    shutil.copy(VTEST_SHORT, good)
    corrupt = inputs / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    missing = inputs / "missing.mp4"
    out = tmp_path / "out"

    result = run_app(
        "video",
        str(corrupt),
        str(good),
        str(missing),
        "--out",
        str(out),
        "--pose",
        str(pose_checkpoint),
        cwd=tmp_path,
    )

    assert result.returncode == 1, result.stderr
    log = result.stdout + result.stderr
    assert f"FAILED {corrupt}" in log and "not a decodable video" in log
    assert f"FAILED {missing}" in log and "FileNotFoundError" in log
    assert "2 of 3 inputs failed" in log
    assert sorted(p.name for p in out.iterdir()) == ["good.jsonl", "good.mp4"]

    with av.open(str(VTEST_SHORT)) as src, av.open(str(out / "good.mp4")) as dst:
        s, d = src.streams.video[0], dst.streams.video[0]
        src_frames = [f.to_ndarray(format="rgb24") for f in src.decode(s)]
        dst_frames = [f.to_ndarray(format="rgb24") for f in dst.decode(d)]
        assert d.codec_context.name == "h264"
        assert (d.width, d.height) == (s.width, s.height) == (768, 576)
        assert float(d.average_rate) == pytest.approx(float(s.average_rate))
    assert len(dst_frames) == len(src_frames) == 50
    # Skeletons and the overlay are drawn onto the frames, so the video is not a plain copy.
    assert np.abs(dst_frames[10].astype(int) - src_frames[10]).mean() > 0.5

    lines = (out / "good.jsonl").read_text().splitlines()
    assert len(lines) == 50
    for i, line in enumerate(lines):
        record = json.loads(line)
        assert record["frame"] == i
        assert record["pts"] == pytest.approx(i / 10, abs=1e-3)
        assert 1 <= len(record["poses"]) <= 3
        for pose in record["poses"]:
            x1, y1, x2, y2 = pose["box"]
            assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 576
            keypoints = np.array(pose["keypoints"])
            assert keypoints.shape == (17, 3)
            assert (
                np.isfinite(keypoints).all()
                and ((keypoints[:, 2] >= 0) & (keypoints[:, 2] <= 1.5)).all()
            )
            # Keypoints come from the person's padded crop region, in original image pixels.
            w, h = x2 - x1, y2 - y1
            assert (keypoints[:, 0] > x1 - w).all() and (keypoints[:, 0] < x2 + w).all()
            assert (keypoints[:, 1] > y1 - h).all() and (keypoints[:, 1] < y2 + h).all()
            assert isinstance(pose["track_id"], int) and pose["track_id"] >= 0

    again = run_app(
        "video",
        str(good),
        "--out",
        str(out),
        "--pose",
        str(pose_checkpoint),
        "--skip-existing",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stdout + again.stderr


def test_missing_pose_checkpoint_is_a_clear_error(tmp_path):
    result = run_app(
        "video",
        str(VTEST_SHORT),
        "--out",
        str(tmp_path),
        "--pose",
        str(tmp_path / "none.safetensors"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_demo_with_no_flags_finds_the_figures_with_the_ap_readme_states(tmp_path):
    """README's first command as a user runs it: no flags, so the bundled demo clip and the
    demo weights in weights/; the poses score the AP README states on the clip's ground truth."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "video"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert "demo weights, trained on synthetic figures only" in result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["synthetic_walk.jsonl", "synthetic_walk.mp4"]
    with av.open(str(SYNTHETIC_WALK)) as src, av.open(str(out / "synthetic_walk.mp4")) as dst:
        assert dst.streams.video[0].frames == src.streams.video[0].frames == 60
    metrics = evaluate_video(SYNTHETIC_WALK_GT, out / "synthetic_walk.jsonl")
    stated = re.search(r"end-to-end AP (\d+\.\d)%", (ROOT / "README.md").read_text())
    assert stated, "README states the demo's end-to-end AP"
    assert 100 * metrics["AP"] == pytest.approx(float(stated.group(1)), abs=2.0)


def test_every_pipeline_flag_reaches_its_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    args = app.parser().parse_args(
        ["video", "--nms-threshold", "0.5", "--det-every", "3", "--det-size", "320",
         "--min-score", "0.2", "--decoder", "dark", "--blur", "0", "--temporal", "oneeuro"]
    )  # fmt: skip
    options = app.pipeline_options(args)
    assert (options.pipeline.nms_threshold, options.pipeline.det_every) == (0.5, 3)
    assert (options.pipeline.min_pose_score, options.detection.imgsz) == (0.2, 320)
    assert (options.engine.decoder, options.engine.blur_kernel) == ("dark", 0)
    assert options.temporal.method == "oneeuro"
    defaults = app.pipeline_options(app.parser().parse_args(["video"]))
    assert defaults.pipeline.nms_threshold == 0.9 and defaults.detection.imgsz is None
