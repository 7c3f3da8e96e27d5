"""The browser demo as visitors see it: N Chromium pages with a fake camera, measured in the page.

    python -m realtime.bench.browser --visitors 1 2 4 5 --seconds 20            # the live view
    python -m realtime.bench.browser --visitors 1 --mode stream                  # the image stream

Starts `app.py ui` (demo weights, or `--ui-args`), plays a 640x360 30 fps clip as every page's
camera (Debian's chromium, `--use-file-for-fake-video-capture`) and records, per visitor, what
the page shows, never a server timer. Each camera frame carries its number as a row of 12
black / white blocks at its bottom left (a white start block, 10 bits, a black end block; read
mirrored too). In the page, every frame the camera view shows is decoded once and the time it
was first shown kept; every pose update the page draws is matched to the number on the frame
it belongs to (the frame the page sent, `--mode live`; the image the server drew, `--mode
stream`). Glass-to-glass latency = time the update was drawn - time the camera view first
showed that frame. Also reported: pose updates per second, camera frames per second in the
page, how many visitors got the busy message, and the server's memory (RSS).

Runs: fresh server per visitor count; `--warmup` seconds of streaming are not counted. With
`--rounds R` the same server takes R rounds of visitors, one after the other (each round's pages
opened, streamed and closed), and its memory is read after each: flat, or growing with visits.

    python -m realtime.bench.browser --visitors 4 --rounds 6 --seconds 10   # visitors come and go
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "realtime" / "samples" / "synthetic_walk.mp4"
BLOCK, BITS = 16, 10  # code blocks: 16 px squares, 10 bits of frame number (1024 frames)


def code_blocks(number: int) -> list[int]:
    """The 12 block values (0 / 1) that carry `number`: start 1, bits LSB first, end 0."""
    return [1, *[(number >> b) & 1 for b in range(BITS)], 0]


def write_numbered_clip(
    path: Path, size: tuple[int, int] = (640, 360), fps: int = 30, frames: int = 300,
    source: Path = SAMPLE,
) -> Path:  # fmt: skip
    """`frames` frames of `source` (looped), scaled to `size`, each with its number burned in,
    as I420 YUV4MPEG2 (Chromium's fake camera plays it in a loop at `fps`)."""
    width, height = size
    with av.open(str(source)) as container:
        pictures = [
            f.reformat(width=width, height=height, format="yuv420p").to_ndarray()
            for f in container.decode(video=0)
        ]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        y0 = height - 2 * BLOCK
        for i in range(frames):
            yuv = pictures[i % len(pictures)]  # (H * 3 / 2, W): the Y, U and V planes, flat
            y = yuv[:height].copy()
            uv = yuv[height:].reshape(2, height // 2, width // 2).copy()
            for k, bit in enumerate(code_blocks(i)):
                x0 = BLOCK // 2 + BLOCK * k
                y[y0 : y0 + BLOCK, x0 : x0 + BLOCK] = 235 if bit else 16
                uv[:, y0 // 2 : (y0 + BLOCK) // 2, x0 // 2 : (x0 + BLOCK) // 2] = 128  # gray
            out.write(b"FRAME\n" + y.tobytes() + uv.tobytes())
    return path


# In the page: decode the burned-in number; hook the camera view and the pose updates.
MEASURE_JS = """([mode, block, bits]) => {
  const m = {shown: new Map(), updates: [], videoFrames: 0, codes: new Map()};
  window.ccmMeasure = m;
  const strip = document.createElement('canvas');
  const sctx = strip.getContext('2d', {willReadFrequently: true});
  function decode(source, w, h) {
    const y0 = h - 2 * block, n = bits + 2;
    strip.width = w; strip.height = block;
    sctx.drawImage(source, 0, y0, w, block, 0, 0, w, block);
    const row = sctx.getImageData(0, block / 2, w, 1).data;
    const at = (x) => row[4 * Math.round(x)] > 128 ? 1 : 0;
    for (const mirrored of [false, true]) {
      const v = [];
      for (let k = 0; k < n; k++) {
        const x = block / 2 + block * k + block / 2;
        v.push(at(mirrored ? w - 1 - x : x));
      }
      if (v[0] === 1 && v[n - 1] === 0)
        return v.slice(1, n - 1).reduce((acc, b, i) => acc + (b << i), 0);
    }
    return null;
  }
  function watchVideo(video) {
    const tick = (now) => {
      m.videoFrames += 1;
      const code = decode(video, video.videoWidth, video.videoHeight);
      const last = m.shown.get(code);
      if (code !== null && (last === undefined || now - last > 5000)) m.shown.set(code, now);
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  }
  const found = setInterval(() => {
    const video = document.querySelector(mode === 'live' ? '#live-view video' : '#camera video');
    if (video && video.videoWidth) { clearInterval(found); watchVideo(video); }
  }, 50);
  if (mode === 'live') {
    window.ccmLive.onCapture = (ctx, index) => {
      m.codes.set(index, decode(ctx.canvas, ctx.canvas.width, ctx.canvas.height));
    };
    window.ccmLive.onDraw = (message, t) => {
      m.updates.push([t, m.codes.get(message.frame)]); m.codes.delete(message.frame);
    };
  } else {
    let last = null;
    new MutationObserver(() => {
      const img = document.querySelector('#poses img');
      if (!img || img.src === last) return;
      last = img.src;
      const t = performance.now(), probe = new Image();
      probe.onload = () => m.updates.push([t, decode(probe, probe.width, probe.height)]);
      probe.src = img.src;
    }).observe(document.querySelector('#poses'),
               {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  }
}"""

# Per visitor, the updates after `from` (ms): [time, latency or null] and the video frame count.
RESULTS_JS = """(from) => {
  const m = window.ccmMeasure;
  return {updates: m.updates.filter(([t]) => t >= from).map(([t, code]) => {
            const shown = code === null || code === undefined ? undefined : m.shown.get(code);
            return [t, shown === undefined || shown > t ? null : t - shown]; }),
          videoFrames: m.videoFrames, now: performance.now(),
          status: window.ccmLive ? window.ccmLive.status : ''};
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def start_server(port: int, ui_args: list[str], tries: int = 3) -> subprocess.Popen:
    """`app.py ui` on `port`, returned once the page answers. Gradio gives up at start when
    its first request to the page takes over 3 s (a loaded machine): then it starts again."""
    command = [sys.executable, str(ROOT / "app.py"), "ui", "--port", str(port), *ui_args]
    for _ in range(tries - 1):
        try:
            return _start(command, port)
        except RuntimeError as err:
            print(f"{err}; starting again", file=sys.stderr)
    return _start(command, port)


def _start(command: list[str], port: int) -> subprocess.Popen:
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"app.py ui exited with {server.returncode}") from None
            time.sleep(1)
    server.kill()
    raise RuntimeError("app.py ui did not answer within 300 s")


def record(page, mode: str) -> None:
    """Start the visitor's webcam in `mode` (the live view, or the older image stream)."""
    if mode == "live":
        page.locator("#live-record").click()
    else:
        page.get_by_text("Click to Access Webcam").click()
        page.locator("#camera button.capture-button").click()


def measure(browser, url: str, visitors: int, mode: str, warmup_s: float, seconds: float):
    """One run of `visitors` pages at `url` (its query picks the mode); per-visitor results."""
    pages = []
    for _ in range(visitors):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.grant_permissions(["camera"])
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#live-record", timeout=60_000)
        page.wait_for_timeout(1000)
        page.evaluate(MEASURE_JS, [mode, BLOCK, BITS])
        pages.append(page)
    for page in pages:
        record(page, mode)
    pages[0].wait_for_timeout(warmup_s * 1000)
    starts = [(page.evaluate("performance.now()"), page.evaluate(RESULTS_JS, 0)) for page in pages]
    pages[0].wait_for_timeout(seconds * 1000)
    results = []
    for page, (start, before) in zip(pages, starts, strict=True):
        got = page.evaluate(RESULTS_JS, start)
        latencies = np.array([lat for _, lat in got["updates"] if lat is not None])
        span_s = (got["now"] - start) / 1000
        results.append({
            "updates_per_s": len(got["updates"]) / span_s,
            "video_fps": (got["videoFrames"] - before["videoFrames"]) / span_s,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
            "p95_ms": float(np.percentile(latencies, 95)) if latencies.size else None,
            "matched": int(latencies.size), "status": got["status"],
        })  # fmt: skip
    for page in pages:
        page.context.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[1, 2, 4, 5])
    parser.add_argument("--mode", choices=("live", "stream"), default="live")
    parser.add_argument("--inflight", type=int, choices=(1, 2), default=2,
                        help="live: frames a page may have unanswered")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=20.0, help="measured, per run")
    parser.add_argument("--warmup", type=float, default=8.0, help="streaming not counted")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--ui-args", default="", help="more arguments for `app.py ui`")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of visitors per server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    clip = write_numbered_clip(Path(os.environ.get("TMPDIR", "/tmp")) / "ccm-numbered.y4m")
    flags = [
        "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}", "--disable-background-networking",
        "--disable-component-update", "--autoplay-policy=no-user-gesture-required",
    ]  # fmt: skip
    table = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=flags)
        for n in args.visitors:
            port = free_port()
            server = start_server(port, args.ui_args.split())
            query = "?live=off" if args.mode == "stream" else f"?inflight={args.inflight}"
            try:
                rss = [rss_mb(server.pid)]
                for _ in range(args.rounds):
                    runs = measure(browser, f"http://127.0.0.1:{port}/{query}", n, args.mode,
                                   args.warmup, args.seconds)  # fmt: skip
                    rss.append(rss_mb(server.pid))
                    table.append({"visitors": n, "mode": args.mode, "rss_mb": rss[-2:],
                                  "runs": runs})  # fmt: skip
                    print(row(table[-1]), flush=True)
            finally:
                server.terminate()
                server.wait(30)
        browser.close()
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


def row(entry: dict) -> str:
    """A Markdown table row: visitors | updates/s each | p50 / p95 ms | video fps | busy."""
    runs = entry["runs"]
    served = [r for r in runs if r["updates_per_s"] > 0]
    ups = ", ".join(f"{r['updates_per_s']:.1f}" for r in runs)
    p50 = [r["p50_ms"] for r in served if r["p50_ms"] is not None]
    p95 = [r["p95_ms"] for r in served if r["p95_ms"] is not None]
    lat = f"{np.median(p50):.0f} / {np.median(p95):.0f}" if p50 else "-"
    video = ", ".join(f"{r['video_fps']:.0f}" for r in runs)
    busy = sum("busy" in r["status"] or "already showing" in r["status"] for r in runs)
    rss = entry["rss_mb"]
    return (f"| {entry['visitors']} | {ups} | {lat} | {video} | {busy} | "
            f"{rss[0]:.0f} -> {rss[1]:.0f} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
