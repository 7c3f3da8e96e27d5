"""The page in headless Chromium, several visitors at once, each with a fake camera.

Chromium plays `synthetic_walk.mp4` (as a .y4m file) as the webcam of every page. Each browser
context is one visitor: its own Gradio session and its own local storage. The server runs in
this process on 127.0.0.1, so the tests read its serving counters and memory directly.

The soak (`test_memory_stays_flat_while_streaming`, marked slow) runs only when `$CCM_UI_SOAK_S`
is set: it streams for that many seconds (20 minutes, 1200, is what README reports) and writes
its samples to `$CCM_UI_SOAK_OUT` if set.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest

# gradio is optional (the `ui` extra); without it this module is skipped, not an error.
pytest.importorskip("gradio")
from ui_server import camera_args, free_port, tiny_options

from realtime.stream.assemble import build_pipeline
from realtime.ui.page import UiConfig, build_ui, serve

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SAMPLE = Path(__file__).resolve().parents[3] / "realtime" / "samples" / "synthetic_walk.mp4"
CAMERA_SIZE = (480, 270)
LONG_NAME = "ccm_mobilenetv2_coco_aic_distilled_256x192_softnms_checkpoint_v2.safetensors"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def write_y4m(source: Path, path: Path, size=CAMERA_SIZE, frames: int = 45) -> Path:
    """The first `frames` frames of `source`, scaled to `size`, as raw I420 YUV4MPEG2 (what
    Chromium's fake camera plays, in a loop)."""
    width, height = size
    with av.open(str(source)) as container, open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode())
        for i, frame in enumerate(container.decode(video=0)):
            if i == frames:
                break
            frame = frame.reformat(width=width, height=height, format="yuv420p")
            out.write(b"FRAME\n")
            for k, plane in enumerate(frame.planes):
                w, h = (width, height) if k == 0 else ((width + 1) // 2, (height + 1) // 2)
                rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
                out.write(rows[:h, :w].tobytes())
    return path


def files_under(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, demo, the Gradio temp folder) of a page with two checkpoints, one long-named."""
    weights = tmp_path_factory.mktemp("weights")
    options = tiny_options(weights / "tiny.safetensors")
    shutil.copy(options.pose, weights / LONG_NAME)
    gradio_tmp = tmp_path_factory.mktemp("gradio")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
        config = UiConfig(weights_dir=weights, max_upload_mb=2, keep_files_s=20, sweep_every_s=5)
        demo = build_ui(build_pipeline(options), options, config)
        url = serve(demo, port=free_port(), block=False)
        yield url, demo, gradio_tmp
        demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    camera = write_y4m(SAMPLE, tmp_path_factory.mktemp("camera") / "walk.y4m")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=camera_args(camera))
        yield browser
        browser.close()


def visitor(browser, url: str, query: str = ""):
    """A new visitor (browser context) with the page loaded and the settings restored;
    `query` "?live=off" shows the image stream (the live view's fallback) instead."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["camera"])
    page = context.new_page()
    page.goto(url + query)
    page.wait_for_selector("#loaded-models", timeout=60_000)
    page.wait_for_timeout(1000)  # the load event restores this browser's settings
    return page


# Counts the frames the "Poses" output shows (each a new data URL in its <img>).
_COUNT_FRAMES = """() => {
    window.posesShown = 0;
    let last = null;
    new MutationObserver(() => {
        const img = document.querySelector('#poses img');
        if (img && img.src !== last) { last = img.src; window.posesShown += 1; }
    }).observe(
        document.querySelector('#poses'),
        {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
}"""
_SHOWN = """() => {
    const img = document.querySelector('#poses img');
    return {count: window.posesShown, width: img ? img.naturalWidth : 0,
            height: img ? img.naturalHeight : 0, src: img ? img.src.slice(0, 22) : ''};
}"""


def start_webcam(page) -> None:
    page.get_by_text("Click to Access Webcam").click()
    record = page.locator("#camera button.capture-button")
    record.wait_for(timeout=30_000)
    # The camera view playing first: a click on record before its first frame starts no stream.
    page.wait_for_function(
        "() => (document.querySelector('#camera video') || {}).readyState >= 2",
        timeout=30_000,
    )
    page.evaluate(_COUNT_FRAMES)
    record.click()


def stop_webcam(page) -> None:
    page.locator("#camera button.capture-button").click()


def test_two_visitors_stream_at_once_at_comparable_rates(server, browser):
    url, demo, gradio_tmp = server
    stats = demo.pose_app.worker.stats
    first, second = visitor(browser, url, "?live=off"), visitor(browser, url, "?live=off")
    start_webcam(first)
    start_webcam(second)
    before = (stats.frames, stats.rounds)
    files = []
    for _ in range(20):  # 40 s of both streams
        first.wait_for_timeout(2000)
        files.append(files_under(gradio_tmp))
    shown = [page.evaluate(_SHOWN) for page in (first, second)]
    served, rounds = stats.frames - before[0], stats.rounds - before[1]
    for page in (first, second):
        stop_webcam(page)
        page.context.close()

    counts = [s["count"] for s in shown]
    print(f"frames shown {counts}, served {served} in {rounds} rounds, temp files {files}")
    assert min(counts) >= 20, shown  # both visitors get skeleton frames, neither waits
    assert min(counts) >= 0.5 * max(counts), shown  # at comparable rates
    for s in shown:  # the rendered camera frame, as an in-memory JPEG
        assert (s["width"], s["height"]) == CAMERA_SIZE and s["src"] == "data:image/jpeg;base64"
    assert served >= min(counts)
    assert served > 1.3 * rounds  # most rounds carried both visitors' frames in one batch
    assert stats.largest_batch == 2
    assert max(files) <= 5, files  # streamed frames never pile up in the temp folder


def test_settings_are_per_visitor_and_survive_a_reload(server, browser):
    url, _, _ = server
    first, second = visitor(browser, url), visitor(browser, url)
    loaded = first.locator("#loaded-models")
    number = first.locator("#det-every input[type=number]")
    number.fill("5")
    number.press("Enter")  # typed and Enter: applied
    sync_api.expect(loaded).to_contain_text("detect every 5 frames", timeout=30_000)
    slider = first.locator("#det-every input[type=range]")
    slider.focus()
    slider.press("ArrowRight")  # the keyboard on the slider: applied
    sync_api.expect(loaded).to_contain_text("detect every 6 frames", timeout=30_000)
    second.get_by_label("Flip test").uncheck()
    sync_api.expect(second.locator("#loaded-models")).to_contain_text("flip test off")

    for page in (first, second):
        page.reload()
        page.wait_for_selector("#loaded-models", timeout=60_000)
        page.wait_for_timeout(1000)
    assert first.locator("#det-every input[type=number]").input_value() == "6"
    sync_api.expect(first.locator("#loaded-models")).to_contain_text("flip test on")
    assert first.get_by_label("Flip test").is_checked()
    sync_api.expect(second.locator("#loaded-models")).to_contain_text("detect every 1 frames")
    assert second.locator("#det-every input[type=number]").input_value() == "1"
    assert not second.get_by_label("Flip test").is_checked()
    # A visitor who comes later gets the defaults, not what the others chose.
    third = visitor(browser, url)
    sync_api.expect(third.locator("#loaded-models")).to_contain_text("every 1 frames, flip test on")
    for page in (first, second, third):
        page.context.close()


def test_model_names_are_whole_and_nothing_covers_the_overlay(server, browser):
    url, _, _ = server
    page = visitor(browser, url)
    page.locator("#pose-model input").click()
    option = page.get_by_role("option", name=LONG_NAME)
    option.click()
    sync_api.expect(page.locator("#loaded-models")).to_contain_text(LONG_NAME, timeout=60_000)
    shown = page.evaluate("""() => { const i = document.querySelector('#pose-model input');
        return [i.value, i.scrollWidth, i.clientWidth]; }""")
    assert shown[0] == LONG_NAME and shown[1] <= shown[2], shown  # not cut off
    # The output has no label floating over its top-left corner, where the FPS overlay is.
    labels = page.locator("#poses [data-testid=block-label]")
    assert not any(labels.nth(i).is_visible() for i in range(labels.count()))
    page.context.close()


@pytest.mark.slow
@pytest.mark.skipif(
    "CCM_UI_SOAK_S" not in os.environ, reason="a soak of minutes: set CCM_UI_SOAK_S=seconds"
)
def test_memory_stays_flat_while_streaming(server, browser):
    url, demo, gradio_tmp = server
    seconds = float(os.environ["CCM_UI_SOAK_S"])
    pages = [visitor(browser, url, "?live=off"), visitor(browser, url, "?live=off")]
    for page in pages:
        start_webcam(page)
    samples, start = [], time.monotonic()
    while time.monotonic() - start < seconds:
        pages[0].wait_for_timeout(10_000)
        for page in pages:  # a stream ends after UiConfig.stream_time_limit_s: record again
            if page.locator("#camera button.capture-button").inner_text().strip() == "Record":
                page.locator("#camera button.capture-button").click()
        stats = demo.pose_app.worker.stats
        samples.append({"t": round(time.monotonic() - start), "rss_mb": round(rss_mb(), 1),
                        "frames": stats.frames, "files": files_under(gradio_tmp)})  # fmt: skip
        if len(samples) % 6 == 0:
            print(samples[-1], flush=True)
    for page in pages:
        page.context.close()
    if os.environ.get("CCM_UI_SOAK_OUT"):
        Path(os.environ["CCM_UI_SOAK_OUT"]).write_text(json.dumps(samples, indent=1))
    rss = np.array([s["rss_mb"] for s in samples])
    settled = rss[len(rss) // 4 :]  # after the first quarter (allocator and caches warm up)
    print(f"rss {rss[0]:.0f} -> {rss[-1]:.0f} MB, after warm-up {settled.min():.0f}.."
          f"{settled.max():.0f} MB, frames {samples[-1]['frames']}")  # fmt: skip
    assert samples[-1]["frames"] > samples[0]["frames"]
    assert settled.max() - settled[0] < 100, samples  # flat: no growth with frames served
    assert max(s["files"] for s in samples) <= 5


def test_uploads_and_results_are_deleted_after_their_age(server, tmp_path):
    url, demo, gradio_tmp = server
    gradio_client = pytest.importorskip("gradio_client")
    clip = tmp_path / "walk.mp4"
    with av.open(str(SAMPLE)) as source, av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for i, frame in enumerate(source.decode(video=0)):
            if i == 6:
                break
            for packet in stream.encode(frame.reformat(width=320, height=180)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    client = gradio_client.Client(url, verbose=False, download_files=False)
    _, _, summary = client.predict(gradio_client.handle_file(str(clip)), api_name="/process_video")
    assert summary.startswith("6 frames in ")
    jobs = demo.pose_app.jobs_dir
    made = files_under(gradio_tmp)
    assert made >= 3 and files_under(jobs) >= 2  # the upload, the video, the poses
    deadline = time.monotonic() + 90  # kept 20 s, looked for every 5 s
    while time.monotonic() < deadline and (files_under(gradio_tmp) or files_under(jobs)):
        time.sleep(2)
    assert (files_under(gradio_tmp), files_under(jobs)) == (0, 0), made


def test_a_refused_upload_leaves_nothing(server):
    url, _, gradio_tmp = server
    httpx = pytest.importorskip("httpx")
    before = files_under(gradio_tmp)
    big = np.random.default_rng(3).integers(0, 256, 3 * 2**20, dtype=np.uint8).tobytes()
    response = httpx.post(url + "gradio_api/upload", files={"files": ("big.mp4", big)}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    assert str(gradio_tmp) not in response.text  # no server path in the answer
    assert files_under(gradio_tmp) == before
