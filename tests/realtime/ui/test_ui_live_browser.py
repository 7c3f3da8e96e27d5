"""The webcam tab's live view in headless Chromium: the page plays its fake camera, sends frames
up the WebSocket and draws the poses it gets back on a canvas over the video.

Each browser context is one visitor. The server (two webcams at most) runs in this process, so
the tests read its serving state directly; the page's script exposes its counters as
`window.ccmLive`.
"""

from __future__ import annotations

import re
import shutil
import time

import pytest

pytest.importorskip("gradio")  # optional on a GPU machine: skipped, not an error
from ui_server import camera_args, free_port, tiny_options

from realtime.bench.browser import write_numbered_clip
from realtime.stream.assemble import build_pipeline
from realtime.ui.page import UiConfig, build_ui, serve

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CAMERA_SIZE = (320, 180)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, demo) of a page that serves two webcams at most."""
    options = tiny_options(tmp_path_factory.mktemp("weights") / "tiny.safetensors")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        config = UiConfig(weights_dir=options.pose.parent, max_streams=2)
        demo = build_ui(build_pipeline(options), options, config)
        url = serve(demo, port=free_port(), block=False)
        yield url, demo
        demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    camera = tmp_path_factory.mktemp("camera") / "numbered.y4m"
    write_numbered_clip(camera, size=CAMERA_SIZE, fps=15, frames=30)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=camera_args(camera))
        yield browser
        browser.close()


def visitor(browser, url: str, fetched: list[str] | None = None):
    """A new visitor with the page loaded; the URLs it requests go to `fetched`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["camera"])
    if fetched is not None:
        context.on("request", lambda request: fetched.append(request.url))
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#live-record", timeout=60_000)
    page.wait_for_selector("#live-session [data-session]", state="attached", timeout=60_000)
    return page


def record(page, updates: int = 0) -> None:
    page.locator("#live-record").click()
    if updates:
        wait_updates(page, updates)


def wait_updates(page, updates: int) -> None:
    page.wait_for_function(f"window.ccmLive.updates >= {updates}", timeout=90_000)


def live(page) -> dict:
    return page.evaluate("""() => { const l = window.ccmLive; return {updates: l.updates,
        sent: l.sent, mode: l.mode, status: l.status, fps: l.fps, latency: l.latencyMs}; }""")


# After every drawn update: the joints above the threshold inside the canvas below the readout
# (the top 24 rows), and the canvas pixels painted there: what was drawn against what came.
_WATCH_DRAWS = """() => {
    window.draws = [];
    const canvas = document.querySelector('#live-view canvas');
    window.ccmLive.onDraw = (message) => {
        const ctx = canvas.getContext('2d');
        const pixels = ctx.getImageData(0, 24, canvas.width, canvas.height - 24).data;
        let painted = 0;
        for (let i = 3; i < pixels.length; i += 4) painted += pixels[i] > 0;
        const joints = message.poses.reduce((n, p) => n + p.keypoints.filter(([x, y, s]) =>
            s > 0.3 && x >= 0 && x < canvas.width && y >= 30 && y < canvas.height).length, 0);
        window.draws.push({joints, painted, people: message.poses.length,
                           size: [canvas.width, canvas.height]});
    };
}"""


def test_the_live_view_draws_the_poses_over_the_playing_camera(server, browser):
    url, _ = server
    fetched: list[str] = []
    page = visitor(browser, url, fetched)
    page.evaluate(_WATCH_DRAWS)
    record(page, updates=8)
    draws = page.evaluate("window.draws")
    state = live(page)
    video = page.evaluate("""() => { const v = document.querySelector('#live-view video');
        return [v.videoWidth, v.videoHeight, v.paused]; }""")
    page.context.close()

    assert video == [*CAMERA_SIZE, False]  # the camera itself plays in the page
    outside = [u for u in fetched if not u.startswith((url, url.replace("http", "ws", 1)))]
    assert fetched and not [u for u in outside if not u.startswith(("data:", "blob:"))], outside
    assert state["mode"] == "streaming" and state["status"] == "Streaming."
    assert state["fps"] > 0 and state["latency"] > 0  # the readout has numbers
    assert all(d["size"] == list(CAMERA_SIZE) for d in draws)  # canvas in camera pixels
    assert sum(d["joints"] for d in draws) > 0, draws
    for d in draws:  # joints above the threshold are drawn; nothing is drawn for no one
        assert d["painted"] > 0 if d["joints"] else True, d
        assert d["painted"] == 0 if not d["people"] else True, d


def test_two_visitors_stream_at_once_each_with_their_own_settings(server, browser):
    url, demo = server
    first, second = visitor(browser, url), visitor(browser, url)
    second.get_by_label("Flip test").uncheck()
    sync_api.expect(second.locator("#loaded-models")).to_contain_text("flip test off")
    record(first)
    record(second)
    wait_updates(first, 10)
    wait_updates(second, 10)
    engines = {key.config.flip_test for key, _ in demo.pose_app.engines.items()}
    assert demo.pose_app.worker.live_streams() == 2
    for page in (first, second):
        page.context.close()
    assert engines == {True, False}  # the second visitor's frames ran without the flip test
    assert demo.pose_app.worker.stats.largest_batch == 2  # both visitors' frames in one round


def test_a_busy_visitor_is_told_once_and_a_closed_tab_frees_its_place(server, browser):
    url, demo = server
    worker = demo.pose_app.worker
    first, second, third = (visitor(browser, url) for _ in range(3))
    record(first, updates=3)
    record(second, updates=3)
    record(third)
    sync_api.expect(third.locator("#live-status")).to_have_text(
        "Sorry, the server is already showing 2 webcams, its most; press Record again when one "
        "of them stops.",
        timeout=30_000,
    )
    refused = live(third)
    assert refused["mode"] == "idle" and refused["sent"] == 0  # it stops, sends nothing
    assert third.locator("#live-record").inner_text() == "Record"
    assert third.locator(".toast-body").count() == 0  # one message, in the page
    before = [live(p)["updates"] for p in (first, second)]
    for page, count in zip((first, second), before, strict=True):
        wait_updates(page, count + 3)  # the two streaming visitors keep their places

    first.context.close()  # a tab closed mid-stream
    deadline = time.monotonic() + 10
    while worker.live_streams() > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.live_streams() == 1
    record(third, updates=3)  # the freed place is taken
    assert live(third)["mode"] == "streaming"
    for page in (second, third):
        page.context.close()


def test_the_image_stream_takes_over_when_the_live_connection_fails(server, browser):
    url, _ = server
    page = visitor(browser, url)
    page.route_web_socket(re.compile(r"/live/ws\?"), lambda ws: ws.close(code=1011))
    record(page)
    sync_api.expect(page.locator("#live-status")).to_contain_text(
        "Live view unavailable", timeout=30_000
    )
    assert "using the slower image stream below instead" in live(page)["status"]
    assert page.locator("#webcam-fallback").is_visible()
    assert not page.locator(".ccm-live-view").is_visible()
    page.get_by_text("Click to Access Webcam").click()
    capture = page.locator("#camera button.capture-button")
    capture.wait_for(timeout=30_000)
    capture.click()
    shown = page.locator("#poses img")  # today's stream: frames drawn by the server
    shown.wait_for(timeout=60_000)
    width = page.evaluate("() => document.querySelector('#poses img').naturalWidth")
    page.context.close()
    assert width == CAMERA_SIZE[0]
