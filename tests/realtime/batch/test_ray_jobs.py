"""`--ray`: the video and image batches as Ray jobs on a local Ray instance with 2 CPUs, against
the single-process run of the same inputs (the demo weights, on the CPU, one torch thread)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from realtime.batch.cli import run_images
from realtime.batch.images import COCO_IMAGES_FILE, COCO_RESULTS_FILE, POSES_FILE, process_images
from realtime.batch.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, expand_inputs
from realtime.batch.ray_jobs import run_videos_on_ray
from realtime.batch.ray_pool import RayOptions
from realtime.batch.usage import load_pipeline
from realtime.render import render_frame
from realtime.samples import SYNTHETIC_WALK
from realtime.stream.assemble import PipelineSpec
from realtime.temporal.fusion import TemporalConfig

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
SPEC = PipelineSpec(device="cpu")
ONE_CPU = RayOptions(cpus_per_worker=1)  # two workers on the two CPUs, one torch thread each
LENGTHS = {"a": 2, "b": 10, "c": 5, "d": 3}  # frames: uneven clips


def steady_render(frame, poses, fps=None, latency_ms=None):
    """render_frame without the FPS and latency overlay, which differ from run to run."""
    return render_frame(frame, poses)


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
        configure_logging=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}},
    )  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def walk_frames() -> list[np.ndarray]:
    with av.open(str(SYNTHETIC_WALK)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return [cv2.resize(f, (320, 180), interpolation=cv2.INTER_AREA) for f in frames]


def write_walk(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory, walk_frames) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for name, frames in LENGTHS.items():
        write_walk(folder / f"{name}.mp4", walk_frames[:frames])
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    return folder


_SINGLE_PROCESS = """
import sys
from pathlib import Path

import torch

from realtime.batch.usage import load_pipeline
from realtime.batch.videos import process_video
from realtime.render import render_frame
from realtime.stream.assemble import PipelineSpec

torch.set_num_threads(1)
out, clips, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
pipeline = load_pipeline(PipelineSpec(device="cpu"))
steady = lambda frame, poses, *_, **__: render_frame(frame, poses)  # noqa: E731
for name in names:
    report = process_video(clips / f"{name}.mp4", out, pipeline, steady)
    assert report.error is None, report.error
"""


@pytest.fixture(scope="module")
def single_process(clips, tmp_path_factory) -> Path:
    """The outputs of the single-process `process_video`, one torch thread, in a process of its
    own as a Ray worker has (this one's oneDNN state is whatever the tests before left)."""
    out = tmp_path_factory.mktemp("single")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _SINGLE_PROCESS, str(out), str(clips), *LENGTHS]
    subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, timeout=600)
    return out


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _run(out: Path, *clips: Path, **kwargs) -> tuple[int, list[str]]:
    said: list[str] = []
    found = expand_inputs(clips, VIDEO_SUFFIXES, exclude=out)
    code = run_videos_on_ray(
        found.files, [], out, SPEC, kwargs.pop("skip_existing", False), False, ONE_CPU, said.append,
        render=steady_render, **kwargs,
    )  # fmt: skip
    return code, said


def test_uneven_clips_and_a_corrupt_one_come_out_as_the_single_process_run(
    local_ray, clips, single_process, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    code, said = _run(out, clips)
    assert code == 1
    assert said[-1] == f"1 of 5 inputs failed: {clips / 'corrupt.mp4'}"
    assert [line for line in said if line.startswith("FAILED")] == [
        f"FAILED {clips / 'corrupt.mp4'}: not a decodable video: [Errno 1094995529] Invalid data "
        f"found when processing input: '{clips / 'corrupt.mp4'}'"
    ]
    # Byte for byte what the single-process run wrote, every frame of every clip.
    for name, frames in LENGTHS.items():
        for suffix in (".jsonl", ".mp4"):
            assert (out / f"{name}{suffix}").read_bytes() == (
                single_process / f"{name}{suffix}"
            ).read_bytes(), name + suffix
        lines = (out / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(line)["frame"] for line in lines] == list(range(frames))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{s}" for n in LENGTHS for s in ("jsonl", "mp4")
    )

    # Run again: whatever is done is skipped, and no Ray worker is started for it.
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, said = _run(out, *(clips / f"{name}.mp4" for name in LENGTHS), skip_existing=True)
    assert code == 0
    assert sorted(re.findall(r"^skipped \S+/(\w)\.mp4: ", "\n".join(said), re.M)) == list("abcd")
    assert said[-1] == f"all 4 inputs done; outputs in {out}"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == kept


def test_a_worker_killed_mid_video_has_its_video_redone_complete(
    local_ray, clips, single_process, tmp_path, walk_frames
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_walk(inputs / "long.mp4", walk_frames[:24])
    (inputs / "b.mp4").write_bytes((clips / "b.mp4").read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    killed: list[int] = []

    def kill_the_worker_of_long() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            parts = [re.match(r"\.long\.jsonl\.(\d+)@", p.name) for p in out.iterdir()]
            pids = [int(m.group(1)) for m in parts if m]
            if pids:
                time.sleep(1.0)  # some frames into the video
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker_of_long)
    killer.start()
    code, said = _run(out, inputs)
    killer.join()
    assert killed and code == 0, said
    assert said[-1] == f"all 2 inputs done; outputs in {out}"
    assert sorted(p.name for p in out.iterdir()) == [
        "b.jsonl",
        "b.mp4",
        "long.jsonl",
        "long.mp4",
    ]  # fmt: skip  (nothing of the killed worker left, not even hidden)
    lines = (out / "long.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(24))
    with av.open(str(out / "long.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 24
    assert (out / "b.jsonl").read_bytes() == (single_process / "b.jsonl").read_bytes()


def test_images_in_chunks_come_out_as_the_single_process_run(
    local_ray, tmp_path, walk_frames, one_thread, monkeypatch
):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i in range(0, 30, 10):
        cv2.imwrite(str(photos / f"f{i:02d}.png"), walk_frames[i][..., ::-1])
    cv2.imwrite(str(photos / "sub" / "g.jpg"), walk_frames[33][..., ::-1])
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    out, single = tmp_path / "out", tmp_path / "single"
    said: list[str] = []
    monkeypatch.setattr("realtime.batch.cli.say", said.append)
    code = run_images([photos], out, SPEC, ray=ONE_CPU)
    assert code == 1
    assert said[-2] == f"1 of 5 inputs failed: {photos / 'broken.png'}"
    assert said[-1].startswith("4 images posed: ")
    files = expand_inputs([photos], IMAGE_SUFFIXES, keep_suffix=True, kind="image").files
    options = SPEC.__class__(device="cpu", temporal=TemporalConfig(method="none"))
    reports = process_images(files, single, load_pipeline(options), render_frame)
    assert sum(r.error is None for r in reports) == 4
    for name in (POSES_FILE, COCO_RESULTS_FILE, COCO_IMAGES_FILE, "sub/g.jpg", "f10.png"):
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    assert len((out / POSES_FILE).read_text().splitlines()) == 4


def test_ray_flag_takes_an_address_or_none():
    from app_module import load_app  # here: Ray workers import this module, not tests/

    app = load_app()
    parse = app.parser().parse_args
    assert parse(["video", "x.mp4", "--ray"]).ray == "local"
    assert app.ray_options(parse(["video", "x.mp4", "--ray"])) == RayOptions(None, 4)
    assert app.ray_options(parse(["images", "p", "--ray", "auto", "--ray-cpus", "2"])) == (
        RayOptions("auto", 2)
    )
    assert parse(["video", "--ray=ray://head:10001", "x"]).ray == "ray://head:10001"
    assert app.ray_options(parse(["video", "x"])) is None
    with pytest.raises(SystemExit):  # an input after a bare --ray is no address
        parse(["video", "--ray", "clips/"])


def test_app_with_ray_runs_on_local_ray_and_stops_cleanly_on_ctrl_c(tmp_path, walk_frames):
    """The command as a user runs it, on the local Ray instance, then SIGINT mid-batch."""
    clips = tmp_path / "clips"
    clips.mkdir()
    write_walk(clips / "long.mp4", walk_frames[:60])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, str(ROOT / "app.py"), "video", "clips", "--out", "out",
               "--device", "cpu", "--ray", "--ray-cpus", "1"]  # fmt: skip
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and any(p.name.startswith(".long.jsonl.") for p in out.iterdir()):
                time.sleep(1.0)
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert (
        "interrupted by SIGINT: 0 of 1 input(s) finished and kept, the unfinished ones' files "
        "removed; run again with --skip-existing to go on"
    ) in stdout
    assert list(out.iterdir()) == []  # nothing of the unfinished video, not even hidden


def test_a_video_that_kills_every_worker_is_a_failed_input_after_bounded_tries(
    local_ray, clips, tmp_path, walk_frames, monkeypatch
):
    monkeypatch.setattr("realtime.batch.ray_pool.MAX_ATTEMPTS", 2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    small = [cv2.resize(f, (160, 96)) for f in walk_frames[:2]]
    with av.open(str(inputs / "poison.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for frame in small:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    (inputs / "a.mp4").write_bytes((clips / "a.mp4").read_bytes())

    def render_or_die(frame, poses, fps=None, latency_ms=None):
        if frame.shape[1] == 160:  # the poison clip: the worker process dies, as on a crash
            os._exit(3)
        return render_frame(frame, poses)

    out = tmp_path / "out"
    out.mkdir()
    said: list[str] = []
    found = expand_inputs([inputs], VIDEO_SUFFIXES, exclude=out)
    code = run_videos_on_ray(
        found.files, [], out, SPEC, False, False, ONE_CPU, said.append, render=render_or_die
    )
    assert code == 1
    failed = [line for line in said if line.startswith("FAILED")]
    assert len(failed) == 1
    assert failed[0].startswith(f"FAILED {inputs / 'poison.mp4'}: its Ray worker died 2 times: ")
    assert said[-1] == f"1 of 2 inputs failed: {inputs / 'poison.mp4'}"
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl", "a.mp4"]
