"""Real live streams on loopback for the live-source tests: an ffmpeg process (the binary that
imageio-ffmpeg ships) serving a clip as UDP or TCP MPEG-TS or over HTTP, and an RTSP server in
the test process (the `rtsp` package: pure Python on PyAV, MIT, no binary fetched at run time).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import av
import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(
    clip: Path | str, url: str, loop: bool = True, seconds: float | None = None, copy: bool = False
) -> subprocess.Popen:
    """ffmpeg sending `clip` at its frame rate as MPEG-TS to `url`: udp://127.0.0.1:P (sent),
    tcp://127.0.0.1:P (one client, listening), http://127.0.0.1:P/x.ts (one client,
    listening). `loop` repeats the clip; `seconds` stops after that much; `copy` sends the
    clip's packets as they are (else H.264 re-encoded with a keyframe every second)."""
    command = [FFMPEG, "-nostdin", "-loglevel", "error", "-re"]
    command += ["-stream_loop", "-1"] if loop else []
    command += ["-i", str(clip)]
    command += ["-t", str(seconds)] if seconds else []
    if copy:
        command += ["-c", "copy"]
    else:
        command += ["-an", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]
        command += ["-g", "15", "-pix_fmt", "yuv420p"]
    command += ["-f", "mpegts"]
    if url.startswith("udp://"):
        target = url + "?pkt_size=1316"
    elif url.startswith("tcp://"):
        target = url + "?listen=1"
    else:
        command += ["-listen", "1"]
        target = url
    return subprocess.Popen([*command, target])


def wait_listening(port: int, limit: float = 30.0) -> None:
    """Until something accepts TCP connections on 127.0.0.1:`port` (checked without
    connecting: a one-client ffmpeg would take the probe for its client)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken: the server is listening
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def to_transport_stream(clip: Path, out: Path) -> Path:
    """`clip` as an MPEG-TS file (H.264, its own size), for streams made of pieces."""
    subprocess.run(
        [FFMPEG, "-nostdin", "-loglevel", "error", "-y", "-i", str(clip), "-c:v", "libx264",
         "-preset", "ultrafast", "-g", "5", "-f", "mpegts", str(out)],
        check=True,
    )  # fmt: skip
    return out


def serve_in_bursts(stream: Path, port: int, frames: int, every: float) -> threading.Thread:
    """A TCP server thread for one client, sending the MPEG-TS file `stream` `frames` video
    frames at a time, one burst every `every` seconds (a network that holds frames back and
    then delivers them together), then closing the connection."""
    with av.open(str(stream)) as container:
        starts = [p.pos for p in container.demux(video=0) if p.size and p.pos is not None]
    data = stream.read_bytes()
    cuts = [0, *starts[frames::frames], len(data)]
    listener = socket.create_server(("127.0.0.1", port))

    def send() -> None:
        with listener, listener.accept()[0] as client:
            for begin, end in zip(cuts[:-1], cuts[1:], strict=True):
                client.sendall(data[begin:end])
                time.sleep(every)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(10)
