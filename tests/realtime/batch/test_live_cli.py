"""`app.py video SOURCE` on live streams, the way a user runs it: real streams on loopback
(ffmpeg for UDP, TCP and HTTP; the `rtsp` package's server for RTSP, see tests/streams.py),
random-weight models (the outputs' numbers are checked, not the poses' quality)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest
from app_module import load_app
from streams import free_port, serve, stop, wait_listening
from ui_server import tiny_checkpoint

from realtime.batch import live
from realtime.samples import SYNTHETIC_WALK

ROOT = Path(__file__).resolve().parents[3]
# A random detector that finds three boxes a frame, float networks: these tests are about the
# streams (the first one runs the shipped defaults, int8 networks on the demo weights).
MODEL_FLAGS = ["--detector", "yolo11n.yaml", "--det-conf", "0", "--det-max", "3",
               "--det-size", "320", "--min-score", "0", "--device", "cpu",
               "--precision", "fp32"]  # fmt: skip
STATS = r"(\d+) frames received, (\d+) processed, (\d+) dropped; latency capture to JSON line"


@pytest.fixture(scope="module")
def pose_checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def app_main(cwd: Path, pose: Path, *args: str) -> int:
    """`app.py video ARGS` in this process (no signals to send): its exit code."""
    app = load_app()
    out = str(cwd / "out")
    return app.main(["video", *args, "--out", out, "--pose", str(pose), *MODEL_FLAGS])


def start_app(
    cwd: Path, pose: Path | None, *args: str, env: dict | None = None
) -> subprocess.Popen:
    """`app.py video ARGS` in a process of its own; `pose` None: every model flag at its default."""
    models = ["--pose", str(pose), *MODEL_FLAGS] if pose is not None else []
    command = [sys.executable, str(ROOT / "app.py"), "video", *args, "--out", "out", *models]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip


def frame_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_lines(process: subprocess.Popen, out: Path, count: int, limit: float = 300) -> None:
    """Until some .jsonl under `out` has `count` lines; while the run goes on every line in it
    is whole (the file is flushed line by line under its final name)."""
    deadline = time.monotonic() + limit
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no poses were written"
        for path in out.glob("*.jsonl"):
            text = path.read_text()
            if text.count("\n") >= count:
                assert text.endswith("\n")
                [json.loads(line) for line in text.splitlines()]
                return
        time.sleep(0.1)


def check_outputs(out: Path, stem: str) -> list[dict]:
    """The pairs of files for a source whose names start with `stem`: every mp4 plays and has a
    frame per frame line of its JSON Lines file. Returns all lines, in segment order."""
    lines = []
    pairs = sorted(out.glob(f"{stem}*.jsonl"))
    assert pairs, sorted(p.name for p in out.iterdir())
    for jsonl in pairs:
        records = frame_lines(jsonl)
        frames = [r for r in records if "frame" in r]
        with av.open(str(jsonl.with_suffix(".mp4"))) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert decoded == len(frames) > 0
        for r in frames:
            assert set(r) == {"frame", "pts", "captured", "poses"}
            assert abs(r["captured"] - time.time()) < 3600
        lines += records
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    return lines


@pytest.mark.slow
def start_display(env: dict) -> subprocess.Popen | None:
    """A virtual X display (Xvfb; .ci/setup installs it) for `--show`, named in `env`; None
    where there is no Xvfb."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None
    number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    env["DISPLAY"] = f":{number}"
    return subprocess.Popen([xvfb, f":{number}", "-screen", "0", "1280x800x24", "-nolisten",
                             "tcp"], stderr=subprocess.DEVNULL)  # fmt: skip


def test_udp_stream_until_ctrl_c_in_segments_shown(tmp_path):
    """The shipped defaults (demo weights, int8 networks on a CPU). With Xvfb (apt-get install
    xvfb; .ci/setup installs it) also `--show` on its display."""
    env = dict(os.environ)
    display = start_display(env)
    show = ["--show"] if display is not None else []
    port = free_port(socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    sender = serve(SYNTHETIC_WALK, url)
    app = start_app(tmp_path, None, url, "--segment", "0.05", *show, env=env)
    try:
        wait_for_lines(app, tmp_path / "out", 3)
        time.sleep(4)  # into a second segment (3 s each)
        app.send_signal(signal.SIGINT)
        _, stderr = app.communicate(timeout=120)
    finally:
        app.kill()
        stop(sender)
        if display is not None:
            stop(display)
    assert app.returncode == 0, stderr
    assert "Traceback" not in stderr and "closing the windows failed" not in stderr
    if show:
        assert f"INFO realtime.batch.live: {url}: shown in a window (q or Esc stops)" in stderr
    lines = check_outputs(tmp_path / "out", f"udp-127.0.0.1-{port}-")
    assert len(list((tmp_path / "out").glob("*.mp4"))) >= 2
    frames = [r["frame"] for r in lines]
    assert frames == sorted(set(frames))  # each frame once, in order across the segments
    captured = [r["captured"] for r in lines]
    assert captured == sorted(captured)
    assert "stopped by SIGINT; the outputs are finished" in stderr
    assert "live: both networks in int8 on this CPU" in stderr
    assert "both networks stay float" not in stderr
    people = [len(r["poses"]) for r in lines]  # the clip's four walkers, found in int8
    assert sum(1 for n in people if n >= 3) >= 0.8 * len(people)
    [stats] = [line for line in stderr.splitlines() if "frames received" in line]
    received, processed, dropped = map(int, re.search(STATS, stats).groups())
    assert processed == len(frames) and 0 <= received - processed - dropped <= 1
    assert "p50" in stats and "p95" in stats


@pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xdotool")),
                    reason="needs Xvfb and xdotool (.ci/setup installs them)")  # fmt: skip
def test_q_in_the_window_stops_the_run_with_finished_outputs(tmp_path, pose_checkpoint):
    env = dict(os.environ)
    display = start_display(env)
    port = free_port(socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    sender = serve(SYNTHETIC_WALK, url)
    app = start_app(tmp_path, pose_checkpoint, url, "--show", env=env)
    try:
        wait_for_lines(app, tmp_path / "out", 3)
        # The key goes to the source's window (named after it), focused as a user would.
        subprocess.run(["xdotool", "search", "--sync", "--name", re.escape(url), "windowfocus",
                        "--sync", "key", "q"], env=env, check=True, timeout=30)  # fmt: skip
        _, stderr = app.communicate(timeout=120)
    finally:
        app.kill()
        stop(sender)
        stop(display)
    assert app.returncode == 0, stderr
    assert "stopped by the q / Esc key; the outputs are finished" in stderr
    assert "Traceback" not in stderr
    lines = check_outputs(tmp_path / "out", f"udp-127.0.0.1-{port}-")
    assert len(lines) >= 3


def test_rtsp_stream_to_its_end(tmp_path, pose_checkpoint, monkeypatch, caplog):
    rtsp_source = pytest.importorskip("rtsp.source")

    class LoopbackServer(rtsp_source._RTSPServer):
        def __init__(self, host: str, port: int, sdp) -> None:  # the package binds 0.0.0.0
            super().__init__("127.0.0.1", port, sdp)

    monkeypatch.setattr(rtsp_source, "_RTSPServer", LoopbackServer)
    with av.open(str(SYNTHETIC_WALK)) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    port = free_port()
    server = rtsp_source.Source(f"rtsp://127.0.0.1:{port}/live", fps=15, frame_buffer=images)
    out = tmp_path / "out"
    assert server.wait_ready(30) and server.wait_encoding_started(30)

    def end_stream_after_poses() -> None:  # the server goes away once poses are written
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if sum(p.read_text().count("\n") for p in out.glob("*.jsonl")) >= 5:
                break
            time.sleep(0.1)
        server.close()

    ender = threading.Thread(target=end_stream_after_poses, daemon=True)
    ender.start()
    monkeypatch.setattr(live, "STATS_EVERY_S", 0.5)  # -v: the stats every half second
    with caplog.at_level(logging.DEBUG, logger="realtime.batch.live"):
        code = app_main(tmp_path, pose_checkpoint, server.client_uri, "--reconnect", "0",
                        "--timeout", "3", "-v")  # fmt: skip
    ender.join()
    assert code == 0, caplog.text
    lines = check_outputs(out, f"rtsp-127.0.0.1-{port}-live-")
    assert len(lines) >= 5
    stats = [m for m in caplog.messages if re.search(STATS, m)]
    assert len(stats) >= 2  # on the way, and at the end
    assert stats[-1].startswith(f"{server.client_uri}: ") and stats[-1].endswith("0 reconnects")
    assert int(re.search(STATS, stats[-1])[2]) == len(lines)


@pytest.mark.slow
def test_two_streams_one_drops_and_returns_until_sigterm(tmp_path, pose_checkpoint):
    tcp_port, http_port = free_port(), free_port()
    tcp, http = f"tcp://127.0.0.1:{tcp_port}", f"http://127.0.0.1:{http_port}/live.ts"
    servers = [serve(SYNTHETIC_WALK, tcp, loop=False, seconds=3), serve(SYNTHETIC_WALK, http)]
    wait_listening(tcp_port)
    wait_listening(http_port)
    app = start_app(tmp_path, pose_checkpoint, tcp, http, "--reconnect", "3", "--timeout", "5")
    try:
        servers[0].wait(120)  # the TCP stream ends: the source reopens it with backoff
        servers.append(serve(SYNTHETIC_WALK, tcp))
        deadline = time.monotonic() + 120
        while not any('"gap"' in p.read_text() for p in tmp_path.glob("out/tcp-*.jsonl")):
            assert app.poll() is None and time.monotonic() < deadline, app.communicate()
            time.sleep(0.1)
        time.sleep(1)
        app.send_signal(signal.SIGTERM)
        stdout, stderr = app.communicate(timeout=120)
    finally:
        app.kill()
        for server in servers:
            stop(server)
    assert app.returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    out = tmp_path / "out"
    dropped = check_outputs(out, f"tcp-127.0.0.1-{tcp_port}-")
    steady = check_outputs(out, f"http-127.0.0.1-{http_port}-live.ts-")
    gaps = [r["gap"] for r in dropped if "gap" in r]
    assert len(gaps) == 1 and gaps[0]["reason"] == "the stream ended"
    assert not [r for r in steady if "gap" in r]
    at = next(k for k, r in enumerate(dropped) if "gap" in r)
    before, after = dropped[at - 1], dropped[at + 1]
    assert after["frame"] >= gaps[0]["before_frame"] > before["frame"]
    assert after["captured"] - before["captured"] >= gaps[0]["seconds"] - 0.05 > 0.4
    assert gaps[0]["from"] == before["captured"]
    # Each source has tracks of its own: ids start at 0 in both.
    for lines in (dropped, steady):
        ids = [p["track_id"] for r in lines if "frame" in r for p in r["poses"]]
        assert ids and min(ids) == 0
    assert len([line for line in stderr.splitlines() if "frames received" in line]) == 2
    assert "reopened at attempt" in stderr
    # Both sources' frames went through the models together (one batch a round at times).
    rounds = re.search(r"the models ran (\d+) rounds for (\d+) frames, up to (\d+) frames", stderr)
    frames = len([r for r in dropped + steady if "frame" in r])
    assert int(rounds[2]) == frames and int(rounds[3]) == 2 and int(rounds[1]) < frames


def test_unreachable_source_and_usage_errors_are_one_line(
    tmp_path, pose_checkpoint, monkeypatch, caplog
):
    url = f"tcp://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.INFO):
        assert app_main(tmp_path, pose_checkpoint, url, "--timeout", "2") == 1
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().split(" (")[0] for r in failed] == [f"FAILED {url}: cannot open it"]
    assert all(r.exc_info is None for r in caplog.records)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    for args, message in [
        ((url, "--show"), "--show: no display to open windows on (DISPLAY is not set); run "
         "without --show, or in a desktop session (or under xvfb-run)"),
        ((url, str(SYNTHETIC_WALK)),
         f"live sources and files in one run: run {SYNTHETIC_WALK} on its own"),
        ((url, "--reconnect", "-1"), "--reconnect -1: give 0 or more attempts"),
    ]:  # fmt: skip
        caplog.clear()
        assert app_main(tmp_path, pose_checkpoint, *args) == 2
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [message]
