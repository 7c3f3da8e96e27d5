"""`python app.py video` end to end, the way a user runs it, on the bundled sample clip."""

import argparse
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from app_module import load_app

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


# A random-weight YOLO scores every box alike: conf 0 and --det-max 3 give three "people".
MODEL_FLAGS = ["--detector", "yolo11n.yaml", "--det-conf", "0", "--det-max", "3",
               "--det-size", "320", "--min-score", "0", "--device", "cpu"]  # fmt: skip


def app_command(*args: str, launcher: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *launcher, str(ROOT / "app.py"), *args, *MODEL_FLAGS]


def run_app(*args: str, cwd: Path, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        app_command(*args, launcher=launcher), cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


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
    assert f"FAILED {corrupt}: not a decodable video" in log
    assert f"FAILED {missing}: no such file or folder" in log
    assert f"2 of 3 inputs failed: {missing}, {corrupt}" in log
    assert "Traceback" not in log
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
            # Keypoints come from the person's padded crop region, in original image pixels, and
            # temporal fusion keeps them within one box size of the box.
            w, h = x2 - x1, y2 - y1
            assert (keypoints[:, 0] >= x1 - w).all() and (keypoints[:, 0] <= x2 + w).all()
            assert (keypoints[:, 1] >= y1 - h).all() and (keypoints[:, 1] <= y2 + h).all()
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
    assert "Demo weights in use" in result.stderr  # the notice, with the command to get real ones
    assert "python app.py weights fetch --recommended" in result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["synthetic_walk.jsonl", "synthetic_walk.mp4"]
    with av.open(str(SYNTHETIC_WALK)) as src, av.open(str(out / "synthetic_walk.mp4")) as dst:
        assert dst.streams.video[0].frames == src.streams.video[0].frames == 60
    metrics = evaluate_video(SYNTHETIC_WALK_GT, out / "synthetic_walk.jsonl")
    stated = re.search(r"end-to-end AP (\d+\.\d)%", (ROOT / "README.md").read_text())
    assert stated, "README states the demo's end-to-end AP"
    assert 100 * metrics["AP"] == pytest.approx(float(stated.group(1)), abs=2.0)


def test_every_pipeline_flag_reaches_its_config():
    app = load_app()
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


def test_half_and_tensorrt_flags_build_a_cuda_engine_config():
    # PoseStageConfig checks fp16 and tensorrt against its own device: the flags must set it.
    app = load_app()
    for command in ("video", "ui", "bench"):
        for backend in ("eager", "compile", "tensorrt"):
            args = app.parser().parse_args(
                [command, "--device", "cuda", "--half", "--backend", backend]
            )
            options = app.pipeline_options(args)
            assert (options.device, options.engine.device) == ("cuda", "cuda:0")  # the first GPU
            assert options.engine.resolved_precision == "fp16"
            assert options.engine.backend == backend and options.detection.half
    on_cpu = app.pipeline_options(app.parser().parse_args(["video", "--device", "cpu", "--half"]))
    assert on_cpu.engine.device == "cpu" and on_cpu.engine.resolved_precision != "fp16"


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_video_inputs_are_literal_outputs_distinct_and_failures_named(
    tmp_path, pose_checkpoint, make_clip
):
    """Real folders of files as a new user has them: brackets in names, one stem in two
    folders, clip.avi beside clip.mp4, a cut-off download, a pattern that matches nothing, an
    image folder among the videos, and a temp file a killed run left in the output folder."""
    clips = tmp_path / "clips"
    (clips / "a").mkdir(parents=True)
    (clips / "b").mkdir()
    make_clip(clips / "a" / "clip [1080p].mp4", frames=3)
    make_clip(clips / "a" / "x.mp4", frames=4)
    make_clip(clips / "b" / "x.mp4", frames=5)
    make_clip(clips / "b" / "clip.avi", frames=6, codec="mpeg4")
    make_clip(clips / "b" / "clip.mp4", frames=7)
    full = make_clip(tmp_path / "full.mp4", frames=60, size=(48, 64), faststart=True)
    cut = clips / "b" / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "p.png"), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "out"
    (out / "b").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = out / "b" / f".x.mp4.{int(dead.stdout)}@{socket.gethostname()}.0123abcd.part"
    stale.write_bytes(b"left by a killed run")

    args = ["video", "clips/a/clip [1080p].mp4", "clips", "nothing*.mp4", "photos",
            "--out", "out", "--pose", str(pose_checkpoint)]  # fmt: skip
    result = run_app(*args, cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 1, log
    assert "Traceback" not in log
    assert "FAILED nothing*.mp4: no such file, and no file matches it as a pattern" in log
    assert "FAILED photos: no video files" in log and "use `app.py images`" in log
    failed_cut = re.search(r"FAILED clips/b/cut.mp4: reading failed after (\d+) frames: the data "
                           r"ends or is damaged at frame (\d+) of 60", log)  # fmt: skip
    assert failed_cut, log
    assert 0 < int(failed_cut.group(1)) <= int(failed_cut.group(2)) < 60
    assert "3 of 8 inputs failed: nothing*.mp4, photos, clips/b/cut.mp4" in log
    # Mirrored below the folder given, told apart where a stem repeats; nothing under the cut
    # file's names (its first frames as .partial), and the stale temp file is gone.
    # The bracketed file is named on its own (and found again in clips/): named once, as itself.
    assert _files(out) == [
        "a/x.jsonl", "a/x.mp4",
        "b/clip.avi.jsonl", "b/clip.avi.mp4", "b/clip.mp4.jsonl", "b/clip.mp4.mp4",
        "b/cut.partial.jsonl", "b/cut.partial.mp4",
        "b/x.jsonl", "b/x.mp4", "clip [1080p].jsonl", "clip [1080p].mp4",
    ]  # fmt: skip
    reached = int(failed_cut.group(1))
    assert f"the {reached} frames before are in out/b/cut.partial.mp4 and out/b/cut.partial" in log
    counts = {"clip [1080p]": 3, "a/x": 4, "b/x": 5, "b/clip.avi": 6, "b/clip.mp4": 7,
              "b/cut.partial": reached}  # fmt: skip
    for name, n in counts.items():
        assert _frames(out / f"{name}.mp4") == n, name
        assert len((out / f"{name}.jsonl").read_text().splitlines()) == n, name

    files = _files(out)
    again = run_app(*args, "--skip-existing", cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    assert again.stdout.count("skipped ") == 5 and "FAILED clips/b/cut.mp4" in again.stdout
    assert _files(out) == files


def test_images_command_writes_poses_coco_and_rendered_images(tmp_path, pose_checkpoint):
    from PIL import Image

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    with av.open(str(SYNTHETIC_WALK)) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")[::2, ::2].copy()
    cv2.imwrite(str(photos / "walk.jpg"), rgb[..., ::-1])
    cv2.imwrite(str(photos / "sub" / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    cv2.imwrite(str(photos / "sub" / "gray.webp"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    pil = Image.fromarray(rgb)
    exif = pil.getexif()
    exif[0x0112] = 8  # stored landscape, shown turned counter-clockwise: portrait
    pil.save(photos / "turned.png", exif=exif)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    result = run_app("images", "photos", "--out", "out", "--pose", str(pose_checkpoint),
                     cwd=tmp_path)  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 1, log
    assert "FAILED photos/broken.jpg: not a readable image" in log
    assert "1 of 5 inputs failed: photos/broken.jpg" in log and "4 images posed" in log
    assert "Traceback" not in log
    out = tmp_path / "out"
    assert _files(out) == ["coco_images.json", "coco_results.json", "poses.jsonl",
                           "sub/deep.png", "sub/gray.webp", "turned.png", "walk.jpg"]  # fmt: skip
    lines = [json.loads(line) for line in (out / "poses.jsonl").read_text().splitlines()]
    assert [(r["image"], r["width"], r["height"]) for r in lines] == [
        ("sub/deep.png", 480, 270), ("sub/gray.webp", 480, 270), ("turned.png", 270, 480),
        ("walk.jpg", 480, 270),
    ]  # fmt: skip
    for record in lines:
        assert set(record) == {"image", "width", "height", "poses"}
        assert 1 <= len(record["poses"]) <= 3
        for pose in record["poses"]:
            assert set(pose) == {"track_id", "box", "score", "keypoints"}
            assert pose["track_id"] == -1 and np.array(pose["keypoints"]).shape == (17, 3)
            x1, y1, x2, y2 = pose["box"]
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
    coco = json.loads((out / "coco_results.json").read_text())
    assert len(coco) == sum(len(r["poses"]) for r in lines)
    assert {r["image_id"] for r in coco} <= {1, 2, 3, 4}
    assert cv2.imread(str(out / "turned.png")).shape == (480, 270, 3)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_cleanly_with_a_summary(tmp_path, pose_checkpoint, make_clip, signum):
    make_clip(tmp_path / "a_first.mp4", frames=2)
    long_clip = make_clip(tmp_path / "b_long.mp4", frames=400, size=(96, 128))
    out = tmp_path / "out"
    command = app_command("video", "a_first.mp4", "b_long.mp4", "--out", "out",
                          "--pose", str(pose_checkpoint))  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        # Wait until the first clip is done and the long one is being written.
        while not (list(out.glob(".b_long.mp4.*.part")) and (out / "a_first.jsonl").exists()):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the long clip never started"
            time.sleep(0.05)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    name = signal.Signals(signum).name
    lines = [line for line in stdout.splitlines() if "interrupted" in line]
    assert len(lines) == 1, stdout
    assert lines[0].startswith(f"interrupted by {name} during b_long.mp4 (frame ")
    assert "1 of 2 input(s) finished and kept" in lines[0]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert _files(out) == ["a_first.jsonl", "a_first.mp4"]  # partial files removed
    assert not long_clip.with_suffix(".jsonl").exists()


def test_torchrun_splits_inputs_and_merges_one_summary(tmp_path, pose_checkpoint, make_clip):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, frames in enumerate((3, 4, 5)):
        make_clip(clips / f"c{i}.mp4", frames=frames)
    (clips / "bad.mp4").write_bytes(b"\x00" * 5000)
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    result = run_app("video", "clips", "--out", "out", "--pose", str(pose_checkpoint),
                     cwd=tmp_path, launcher=launcher)  # fmt: skip
    assert result.returncode == 1, result.stderr
    out = result.stdout
    done = re.findall(r"\[rank (\d)/2\] clips/(c\d).mp4 -> ", out)
    failed = re.findall(r"\[rank (\d)/2\] FAILED clips/bad.mp4: not a decodable video", out)
    # Every input exactly once, on both ranks between them; the bad one stops no one.
    assert sorted(c for _, c in done) == ["c0", "c1", "c2"] and len(failed) == 1
    assert {r for r, _ in done} | set(failed) == {"0", "1"}
    assert out.count("inputs failed") == 1 and "1 of 4 inputs failed: clips/bad.mp4" in out
    assert _files(tmp_path / "out") == [f"c{i}.{ext}" for i in range(3) for ext in ("jsonl", "mp4")]
    for i, frames in enumerate((3, 4, 5)):
        assert _frames(tmp_path / "out" / f"c{i}.mp4") == frames


def test_user_errors_are_one_clear_line(tmp_path, pose_checkpoint, make_clip):
    make_clip(tmp_path / "clip.mp4", frames=2)
    bad_weights = tmp_path / "broken.pt"
    bad_weights.write_bytes(b"not a checkpoint" * 100)
    (tmp_path / "a_file").write_text("")
    cases = {
        "--detector": (["--detector", str(bad_weights), "--trust"],
                       f"--detector {bad_weights}: cannot load it: "),
        "untrusted": (["--detector", str(bad_weights)],
                      f"--detector {bad_weights}: loading it unpickles it, which runs any code"),
        "--out": (["--out", "a_file"], "--out a_file: a file is in the way; give a folder"),
        "--device": (["--device", "nonsense"], "--device nonsense: not a device"),
    }  # fmt: skip
    if not torch.cuda.is_available():
        cases["cuda"] = (["--device", "cuda"], "--device cuda: CUDA is not available here")
    for flag, (extra, message) in cases.items():
        command = [sys.executable, str(ROOT / "app.py"), "video", "clip.mp4", "--pose",
                   str(pose_checkpoint), *MODEL_FLAGS, *extra]  # fmt: skip
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2, (flag, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1 and message in errors[0], (flag, result.stderr)
        assert "Traceback" not in result.stderr, flag
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == []
    # --verbose adds the traceback.
    command = [sys.executable, str(ROOT / "app.py"), "video", "clip.mp4", "--device", "gpu", "-v"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert "ERROR ccm-pose: --device gpu: not a device; use cpu, cuda or cuda:N" in result.stderr


def test_help_shows_every_default():
    app = load_app()
    root = app.parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("video", "images", "ui", "bench"):
        sub = commands.choices[name]
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.required:
                continue
            if not action.option_strings and action.nargs == "+":
                continue  # images needs inputs: nothing to default to
            assert "default" in formatter._get_help_string(action), (name, action.dest)
    video = " ".join(commands.choices["video"].format_help().split())
    assert "--blur BLUR Gaussian filter size on heatmaps (GF); 0 = off (default: 11)" in video
    assert (
        "--skip-existing skip inputs whose two outputs already exist and were made from the "
        "same file (default: off)"
    ) in video
    assert "--out OUT output folder (default: out)" in video
