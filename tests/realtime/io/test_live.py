"""Live sources on real loopback streams (ffmpeg, see tests/streams.py): which arguments are
live, start, stall, drop and return, a size change mid-stream, and a source that cannot be
reached. No mocks: PyAV reads what ffmpeg sends."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import av
import pytest
import torch
from streams import free_port, serve, serve_in_bursts, stop, to_transport_stream, wait_listening

from ccm.poses import FramePoses
from realtime.batch.live import live_specs, source_slug
from realtime.batch.segments import LiveSegment
from realtime.io.frames import Frame, _FrameBuffer
from realtime.io.live import Gap, LiveOptions, LiveSource, is_live_spec
from realtime.samples import SYNTHETIC_WALK
from realtime.stream.results import FrameResult

FAST = LiveOptions(timeout=2.0, reconnect=None, backoff=(0.2, 1.0))


def _take(source: LiveSource, count: int, limit: float = 60.0) -> list:
    """The next `count` frames; the limit only turns a hang into a failure."""
    frames, deadline = [], time.monotonic() + limit
    for frame in source:
        frames.append(frame)
        if len(frames) == count:
            return frames
        assert time.monotonic() < deadline, f"only {len(frames)} of {count} frames"
    raise AssertionError(f"the source ended after {len(frames)} of {count} frames")


def test_live_arguments_are_cameras_devices_and_stream_urls(tmp_path, monkeypatch):
    live = ["0", "12", "/dev/video0", "rtsp://cam/stream", "RTSPS://cam:322/s", "rtmp://h/app/k",
            "http://cam/live.ts", "https://h/index.m3u8", "udp://@:1234", "tcp://10.0.0.2:9000",
            "srt://h:9000?mode=caller"]  # fmt: skip
    not_live = ["clip.mp4", "clips/", "*.mp4", "file:///x.mp4", "ftp://h/x.ts", "/dev/sda",
                "video0", "rtsp://", "-1"]  # fmt: skip
    assert [s for s in live if is_live_spec(s)] == live
    assert [s for s in not_live if is_live_spec(s)] == []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "0").write_bytes(b"")  # an existing path is a file, whatever its name
    assert live_specs(["0", "1", "x.mp4", "udp://@:5000"]) == ["1", "udp://@:5000"]


def test_output_names_come_from_the_source_without_credentials():
    assert source_slug("0") == "camera0"
    assert source_slug("/dev/video2") == "dev-video2"
    slug = source_slug("rtsp://admin:secret@cam.local:554/live/ch1")
    assert slug == "rtsp-cam.local-554-live-ch1"
    assert source_slug("udp://@:1234") == "udp-1234"
    assert source_slug("http://127.0.0.1:8080/a b.ts") == "http-127.0.0.1-8080-a-b.ts"


def test_udp_stream_gives_the_newest_frames_and_survives_a_stall():
    port = free_port(socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    sender = serve(SYNTHETIC_WALK, url)
    try:
        with LiveSource(url, FAST) as source:
            assert (source.info.width, source.info.height, source.info.fps) == (960, 540, 15.0)
            assert source.info.live and source.realtime
            before = _take(source, 10)
            os.kill(sender.pid, signal.SIGSTOP)  # connected, but no data: a stall
            time.sleep(FAST.timeout + 1.0)
            os.kill(sender.pid, signal.SIGCONT)
            after = _take(source, 10)
            gaps = source.take_gaps(after[-1].index)
            assert source.reopened == 1
    finally:
        stop(sender)
    indices = [f.index for f in before + after]
    assert indices == sorted(set(indices))  # on across the reconnect, never repeated
    assert [f.image.shape for f in before + after] == [(540, 960, 3)] * 20
    assert len(gaps) == 1
    gap = gaps[0]
    assert "stalled" in gap.reason and gap.attempts >= 1
    assert gap.end - gap.start >= FAST.timeout
    # The first frame after the gap (those before it in `after` were read before the stall):
    # its capture time jumps by the gap, and is when the source came back.
    back = next(k for k, f in enumerate(after) if f.index >= gap.before_frame)
    assert after[back].index == gap.before_frame
    last = (before + after[:back])[-1]
    assert after[back].pts - last.pts >= FAST.timeout
    assert source.wall_time(after[back]) == pytest.approx(gap.end, abs=0.5)
    assert source.wall_time(last) == pytest.approx(gap.start, abs=1e-6)
    assert source.take_gaps(10**9) == []  # handed out once


def test_tcp_stream_that_drops_is_reopened_with_backoff_when_it_returns():
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    first = serve(SYNTHETIC_WALK, url, loop=False, seconds=2)
    wait_listening(port)
    second = None
    try:
        with LiveSource(url, FAST) as source:
            # Some frames of the first stream (2 s); the newest one is kept for the next read.
            # (Reading on until the server has gone would wait forever once it has: no frame
            # comes while nobody listens.)
            before = _take(source, 5)
            first.wait(30)
            time.sleep(1.0)  # a while with nobody listening: attempts fail
            second = serve(SYNTHETIC_WALK, url)
            after = _take(source, 6)
            gaps = source.take_gaps(after[-1].index)
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert len(before) >= 5
    assert len(gaps) == 1 and gaps[0].reason == "the stream ended"
    assert gaps[0].attempts >= 2  # the first attempts found no server
    frames = before + after
    back = next(k for k, f in enumerate(frames) if f.index >= gaps[0].before_frame)
    assert frames[back].index == gaps[0].before_frame
    assert frames[back].pts - frames[back - 1].pts >= 1.0  # the second server's first frame


def test_realtime_buffer_keeps_a_burst_and_drops_what_a_later_frame_makes_stale(clip_image):
    def frame(index: int, captured: float) -> Frame:
        return Frame(index, index / 15, clip_image(index, 8, 8), captured)

    def put_and_take(buffer: _FrameBuffer, *frames: Frame) -> list[int]:
        for f in frames:
            buffer.put(f)
        taken = []
        while len(buffer):
            taken.append(buffer.get().index)
        return taken

    newest = _FrameBuffer(1, drop_oldest=True)
    burst = _FrameBuffer(1, drop_oldest=True)
    burst.burst_s = 0.03
    together = [frame(i, 10.0 + 0.004 * i) for i in range(3)]  # one burst, 4 ms apart
    assert put_and_take(newest, *together) == [2] and newest.dropped == 2
    assert put_and_take(burst, *together) == [0, 1, 2] and burst.dropped == 0
    # Regular frames one interval apart: only the newest, as without bursts.
    regular = [frame(3 + i, 11.0 + i / 15) for i in range(3)]
    assert put_and_take(burst, *regular) == [5] and burst.dropped == 2
    # A burst, then a frame more than burst_s after it: the burst is stale.
    late = [frame(6, 12.0), frame(7, 12.01), frame(8, 12.05)]
    assert put_and_take(burst, *late) == [8] and burst.dropped == 4
    # A burst longer than BURST_FRAMES keeps its newest BURST_FRAMES.
    long = [frame(9 + i, 13.0 + 0.001 * i) for i in range(6)]
    assert put_and_take(burst, *long) == [11, 12, 13, 14] and burst.dropped == 6


def test_stream_delivered_in_bursts_loses_no_frame(tmp_path: Path, make_clip):
    """A network that delivers three frames at once every 0.2 s: the consumer keeps up with
    15 fps on average, so every frame is processed, although two of each three find a newer one
    waiting (the newest-only rule would drop a third of them). Opening the stream reads its
    first second or so, a backlog of stale frames of which only the newest few are kept."""
    clip = make_clip(tmp_path / "clip.mp4", 60, (192, 320), fps=15)
    stream = to_transport_stream(clip, tmp_path / "clip.ts")
    received: dict[float | None, list[int]] = {}
    for burst_s in (None, 0.0):
        port = free_port()
        server = serve_in_bursts(stream, port, frames=3, every=0.2)
        with LiveSource(f"tcp://127.0.0.1:{port}", LiveOptions(timeout=5.0, reconnect=0)) as source:
            assert source._buffer.burst_s == pytest.approx(0.5 / 15)
            if burst_s is not None:
                source._buffer.burst_s = burst_s  # the newest-only rule, for comparison
            received[burst_s] = []
            for frame in source:
                received[burst_s].append(frame.index)
                time.sleep(0.02)  # the pipeline's share: 3 frames in 60 of every 200 ms
            assert source.ended_cleanly
            dropped = source.dropped
        server.join(10)
        assert dropped == 60 - len(received[burst_s])
    assert received[None][-36:] == list(range(24, 60))  # the last 12 bursts, whole
    assert len([i for i in received[0.0] if i >= 24]) <= 24  # one in each of 12 dropped


def test_stream_that_ends_is_not_reopened_with_reconnect_zero():
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = serve(SYNTHETIC_WALK, url, loop=False, seconds=1)
    wait_listening(port)
    try:
        with LiveSource(url, LiveOptions(timeout=5.0, reconnect=0)) as source:
            frames = list(source)
            assert source.ended_cleanly and source.reopened == 0
    finally:
        stop(server)
    assert 5 <= len(frames) <= 16  # about one second at 15 fps, none after the end


def test_size_change_mid_stream_reopens_and_goes_on_at_the_new_size(tmp_path: Path, make_clip):
    small = make_clip(tmp_path / "a.mp4", 45, (120, 160), 15)
    large = make_clip(tmp_path / "b.mp4", 45, (144, 192), 15)
    small, large = (to_transport_stream(c, c.with_suffix(".ts")) for c in (small, large))
    port = free_port(socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    sender = serve(f"concat:{small}|{large}", url, copy=True)
    try:
        with LiveSource(url, FAST) as source:
            sizes = []
            for frame in source:
                sizes.append(frame.image.shape[:2])
                if source.reopened and len(set(sizes)) == 2 and sizes[-1] == sizes[-5:][0]:
                    break
            gaps = source.take_gaps(10**9)
    finally:
        stop(sender)
    assert sizes[0] == (120, 160) and (144, 192) in sizes
    changed = [g for g in gaps if "frame size changed" in g.reason]
    assert changed and changed[0].reason.endswith("from 160x120 to 192x144")
    first_large = sizes.index((144, 192))
    assert set(sizes[:first_large]) == {(120, 160)}  # never a frame of another size mixed in


def test_unreachable_source_fails_within_its_timeout_naming_it():
    refused = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match=rf"^{refused}: cannot open it \(.*refused"):
        LiveSource(refused, FAST)
    # A server that accepts and never sends: the open timeout is what ends the wait.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/live.ts"
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(ValueError, match=rf"^{url}: cannot open it \(.*after 2\.\d s\)$"):
            LiveSource(url, FAST)
    finally:
        silent.close()
    assert time.monotonic() - start < 20  # bounded by the timeout, not hanging


def test_missing_camera_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^/dev/video97: cannot open it \(cannot open camera"):
        LiveSource("/dev/video97", FAST)


def test_segment_writes_lines_at_once_and_never_takes_a_used_name(tmp_path: Path, clip_image):
    base = "udp-1234-20261203T081500Z"
    (tmp_path / f"{base}.mp4").write_bytes(b"an earlier run's video")  # its name is taken
    drawn = []

    def render(image, poses, fps, latency_ms):
        drawn.append(len(poses))
        return image

    segment = LiveSegment(tmp_path, base, fps=10.0, render=render)
    other = LiveSegment(tmp_path, base, fps=10.0, render=render)
    assert segment.jsonl_path.name == f"{base}-2.jsonl"
    assert other.jsonl_path.name == f"{base}-3.jsonl"
    other.close()
    assert not other.video_path.exists()  # no frame, no video; its empty JSON Lines file stays
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    keypoints = torch.full((1, 17, 3), 0.5)
    for i in range(3):
        poses = FramePoses(i, 0.1 * i, boxes, torch.tensor([0.9]), keypoints, torch.tensor([7]))
        frame = Frame(i, 0.1 * i, clip_image(i, 48, 64), time.monotonic())
        if i == 2:
            segment.write_gap(Gap(2, 100.0, 103.25, "the stream ended", 2))
        segment.write(FrameResult(frame, poses), captured=1_800_000_000.0 + i)
        lines = segment.jsonl_path.read_text().splitlines()  # there at once, whole
        assert json.loads(lines[-1])["frame"] == i
    segment.close()
    records = [json.loads(line) for line in segment.jsonl_path.read_text().splitlines()]
    gap = {"before_frame": 2, "from": 100.0, "to": 103.25, "seconds": 3.25,
           "reason": "the stream ended", "attempts": 2}  # fmt: skip
    assert records[2] == {"gap": gap}
    frames = [r for r in records if "frame" in r]
    assert [r["captured"] for r in frames] == [1_800_000_000.0, 1_800_000_001.0, 1_800_000_002.0]
    assert frames[1]["poses"][0]["track_id"] == 7 and frames[1]["pts"] == 0.1
    assert frames[1]["poses"][0]["box"] == [1.0, 2.0, 30.0, 40.0]
    with av.open(str(segment.video_path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3 == len(drawn)
    assert (tmp_path / f"{base}.mp4").read_bytes() == b"an earlier run's video"
