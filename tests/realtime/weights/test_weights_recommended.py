"""`weights fetch --recommended`, the demo-weights notice, and the page's fetch button.

Every download comes from a loopback HTTP server started here (`weights_fixtures`), through a
manifest in a temporary weights folder that names its files like the project's manifest does.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from weights_fixtures import (
    RangeServer,
    app_main,
    direct_to_loopback,
    run_cli,
    serve_files,
    write_manifest,
)

from ccm.checkpoint import load_checkpoint
from ccm.model import build_model
from realtime.offline import configure_offline
from realtime.weights.manifest import WEIGHTS_DIR, load_manifest
from realtime.weights.recommended import (
    DEMO_NOTICE,
    FETCH_COMMAND,
    RECOMMENDED,
    demo_notice,
    recommendation,
)
from realtime.weights.verify import entry_status

configure_offline()  # before gradio is imported

import gradio as gr  # noqa: E402

from realtime.ui.weights_notice import BUTTON_LABEL, add_weights_notice  # noqa: E402

SIZE = (64, 32)
DEMO_POSE = "demo-ccm-mobilenetv2-128x96.safetensors"
DEMO_DETECTOR = "demo-yolo11n-person.pt"

pytestmark = pytest.mark.usefixtures("one_thread")
server = pytest.fixture(scope="module")(serve_files)
no_proxy = pytest.fixture(autouse=True)(direct_to_loopback)


@pytest.fixture(scope="module")
def published(server: RangeServer, tmp_path_factory) -> dict[str, dict]:
    """The recommended names served from loopback: the CPU pose network as a real MMPose-layout
    file (converted on fetch), the others as random bytes with their SHA-256."""
    torch.manual_seed(0)
    model = build_model("simplebaseline_mobilenetv2", input_size=SIZE).eval()
    path = tmp_path_factory.mktemp("public") / "td-hm_mobilenetv2_8xb64-210e_coco-256x192.pth"
    torch.save({"meta": {"epoch": 210}, "state_dict": model.state_dict()}, path)
    files = {
        "mmpose-mobilenetv2-256x192": (path.name, path.read_bytes()),
        "mmpose-hrnet-w48-dark-384x288": ("w48.safetensors", _random_bytes(120_000, 1)),
        "yolo11n": ("yolo11n.pt", _random_bytes(300_000, 2)),
    }
    entries = {}
    for name, (file, data) in files.items():
        server.files[file] = data
        entry = {
            "name": name,
            "kind": "detector" if name == "yolo11n" else "pose",
            "arch": {"yolo11n": "yolo11n", "mmpose-hrnet-w48-dark-384x288": "hrnet_w48"}.get(
                name, "simplebaseline_mobilenetv2"
            ),
            "layout": {"yolo11n": "ultralytics", "mmpose-hrnet-w48-dark-384x288": "ccm"}.get(
                name, "mmpose"
            ),
            "file": file,
            "sha256": hashlib.sha256(data).hexdigest(),
            "url": server.url(file),
            "license": "Apache-2.0",
            "source_ap": 0.6,
        }
        if entry["kind"] == "pose":
            entry["input_size"] = list(SIZE)
        entries[name] = entry
    demo = {"kind": "pose", "arch": "ccm_mobilenetv2", "layout": "ccm", "input_size": [128, 96]}
    entries["demo-pose"] = demo | {"name": "demo-pose", "file": DEMO_POSE, "demo": True}
    entries["demo-det"] = {
        "name": "demo-det",
        "kind": "detector",
        "arch": "yolo11n",
        "layout": "ultralytics",
        "file": DEMO_DETECTOR,
        "demo": True,
    }
    return entries


def _random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def weights_folder(folder: Path, entries: dict[str, dict]) -> Path:
    """`folder` with a manifest.toml of `entries`."""
    write_manifest(folder, *entries.values())
    return folder


def test_the_recommendation_is_small_on_a_cpu_and_large_on_a_gpu():
    assert recommendation("cpu").names == ("mmpose-mobilenetv2-256x192", "yolo11n")
    assert recommendation("cuda:1").names == ("mmpose-hrnet-w48-dark-384x288", "yolo11n")
    assert recommendation("gpu") == recommendation("cuda") == RECOMMENDED["gpu"]
    with pytest.raises(ValueError, match="device must be cpu, gpu, cuda or cuda:N, got 'mps'"):
        recommendation("mps")
    # Every recommended name is in the project's manifest with a URL and a hash to check.
    manifest = load_manifest()
    for chosen in RECOMMENDED.values():
        for name in chosen.names:
            entry = manifest.get(name)
            assert entry.url.startswith("https://") and entry.sha256 and not entry.demo


def test_fetch_recommended_resumes_checks_and_converts(tmp_path, server, published, capsys):
    folder = weights_folder(tmp_path / "weights", published)
    detector = published["yolo11n"]
    data = server.files[detector["file"]]
    (folder / f"{detector['file']}.part").write_bytes(data[:100_000])  # a broken-off download
    server.requests.clear()

    argv = ("weights", "fetch", "--recommended", "--machine", "cpu", "--weights-dir", str(folder))
    assert app_main(*argv) == 0

    out, err = capsys.readouterr()
    assert "recommended for this machine (cpu): no GPU" in out
    pose_file = published["mmpose-mobilenetv2-256x192"]["file"]
    assert server.requests == [
        (f"/{pose_file}", None, len(server.files[pose_file])),
        (f"/{detector['file']}", "bytes=100000-", 200_000),  # resumed, not started over
    ]
    assert "100%" in err and pose_file in err and detector["file"] in err  # two progress bars
    manifest = load_manifest(folder / "manifest.toml")
    for name in RECOMMENDED["cpu"].names:
        assert entry_status(manifest.get(name), folder).state == "verified"
        assert f"{name}: {folder}" in out and "(verified" in out
    _, config = load_checkpoint(folder / "mmpose-mobilenetv2-256x192.safetensors")
    assert (config.arch, config.input_size, config.heatmap_mapping) == (
        "simplebaseline_mobilenetv2",
        SIZE,
        "msra",
    )
    assert (folder / "yolo11n.pt").read_bytes() == data

    # Again: everything is present and verified, nothing travels.
    server.requests.clear()
    assert app_main(*argv) == 0
    assert server.requests == []


def test_fetch_recommended_for_a_gpu_and_a_changed_file(tmp_path, server, published):
    changed = published | {"yolo11n": published["yolo11n"] | {"sha256": "0" * 64}}
    folder = weights_folder(tmp_path / "weights", changed)
    server.requests.clear()

    with pytest.raises(ValueError, match="the download of yolo11n has SHA-256 [0-9a-f]{64}, but"):
        run_cli("fetch", "--recommended", "--machine", "gpu", "--weights-dir", str(folder))

    assert [r[0] for r in server.requests] == ["/w48.safetensors", "/yolo11n.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.toml", "w48.safetensors"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "give either a NAME from `weights list` or --recommended"),
        (("yolo11n", "--recommended"), "give either a NAME"),
        (("yolo11n", "--machine", "cpu"), "--machine goes with --recommended"),
    ],
)
def test_fetch_takes_a_name_or_recommended(tmp_path, argv, message, caplog):
    with pytest.raises(ValueError, match=message):
        run_cli("fetch", *argv, "--weights-dir", str(tmp_path))
    assert app_main("weights", "fetch", *argv, "--weights-dir", str(tmp_path)) == 2
    assert message in caplog.text  # one line, exit code 2


def test_the_notice_names_the_one_command():
    manifest = load_manifest()
    assert FETCH_COMMAND in DEMO_NOTICE and len(DEMO_NOTICE) < 200
    assert demo_notice([WEIGHTS_DIR / DEMO_POSE, "yolo11n.pt"], manifest) == DEMO_NOTICE
    assert demo_notice(["mine.safetensors", WEIGHTS_DIR / DEMO_DETECTOR], manifest) == DEMO_NOTICE
    assert demo_notice(["mine.safetensors", "yolo11n.pt"], manifest) is None


class FakeRequest:
    """What the handlers read of a `gr.Request`: the Host header and the client address."""

    def __init__(self, host: str, client: str = "127.0.0.1") -> None:
        self.headers = {"host": host}
        self.client = argparse.Namespace(host=client)


def page(folder: Path, pose: str = DEMO_POSE, detector: str = DEMO_DETECTOR):
    with gr.Blocks() as demo:
        fetcher = add_weights_notice(demo, folder / pose, folder / detector, folder, "cpu")
    return demo, fetcher


def test_the_page_shows_the_notice_and_fetches_on_a_click_only(tmp_path, server, published):
    folder = weights_folder(tmp_path / "weights", published)
    server.requests.clear()
    demo, fetcher = page(folder)

    config = demo.get_config_file()
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    assert by_id["demo-notice"]["value"] == f"**{DEMO_NOTICE}**"
    button = by_id["fetch-weights"]
    assert button["value"].startswith(BUTTON_LABEL) and button["visible"] is False
    assert server.requests == []  # building the page fetches nothing
    # The button shows on the server's own computer only, never through a share link.
    assert fetcher.offer(FakeRequest("127.0.0.1:7860"))["visible"] is True
    assert fetcher.offer(FakeRequest("localhost:7860", "::1"))["visible"] is True
    assert fetcher.offer(FakeRequest("abc123.gradio.live"))["visible"] is False
    assert fetcher.offer(FakeRequest("127.0.0.1:7860", "192.168.1.20"))["visible"] is False
    with pytest.raises(gr.Error, match="only from a browser on the server's computer"):
        fetcher.fetch(FakeRequest("abc123.gradio.live"), progress=lambda *a, **k: None)
    assert server.requests == []

    shown: list[tuple[float | None, str]] = []
    message = fetcher.fetch(
        FakeRequest("127.0.0.1:7860"), progress=lambda p, desc="": shown.append((p, desc))
    )

    assert message.startswith("Fetched and verified: `mmpose-mobilenetv2-256x192.safetensors`")
    assert "`yolo11n.pt`" in message and "Restart `python app.py ui`" in message
    fractions = {desc.split(":")[0]: [] for _, desc in shown}
    for fraction, desc in shown:
        fractions[desc.split(":")[0]].append(fraction)
    assert set(fractions) == {published["mmpose-mobilenetv2-256x192"]["file"], "yolo11n.pt"}
    for values in fractions.values():
        assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
        assert len(values) <= 101  # at most once per percent
    manifest = load_manifest(folder / "manifest.toml")
    for name in RECOMMENDED["cpu"].names:
        assert entry_status(manifest.get(name), folder).state == "verified"


def test_no_notice_without_demo_weights(tmp_path, published):
    folder = weights_folder(tmp_path / "weights", published)
    demo, fetcher = page(folder, "mine.safetensors", "yolo11n.pt")
    assert fetcher is None
    ids = {c.get("props", {}).get("elem_id") for c in demo.get_config_file()["components"]}
    assert not ids & {"demo-notice", "fetch-weights"}


def test_the_pipeline_logs_the_notice_once_among_its_first_lines(caplog, tmp_path):
    from realtime.detect.detector import DetectorConfig
    from realtime.stream.assemble import PipelineSpec, build_pipeline

    spec = PipelineSpec(
        pose=WEIGHTS_DIR / DEMO_POSE,
        detector=WEIGHTS_DIR / DEMO_DETECTOR,
        device="cpu",
        detection=DetectorConfig(imgsz=320),
    )
    caplog.set_level(logging.INFO)
    build_pipeline(spec)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(DEMO_NOTICE) == 1
    first_stage = next(i for i, m in enumerate(messages) if m.startswith("pose stage:"))
    assert messages.index(DEMO_NOTICE) < first_stage  # before the slow build, among the first


def test_the_ui_page_puts_the_notice_above_the_webcam():
    from realtime.detect.detector import DetectorConfig
    from realtime.stream.assemble import PipelineSpec, build_pipeline
    from realtime.ui.page import UiConfig, build_ui

    spec = PipelineSpec(
        pose=WEIGHTS_DIR / DEMO_POSE,
        detector=WEIGHTS_DIR / DEMO_DETECTOR,
        device="cpu",
        detection=DetectorConfig(imgsz=320),
    )
    demo = build_ui(build_pipeline(spec), spec, UiConfig(weights_dir=WEIGHTS_DIR))
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}

    def in_order(node: dict) -> list[int]:
        return [node["id"]] + [i for child in node.get("children", []) for i in in_order(child)]

    order = in_order(config["layout"])
    assert order.index(ids["demo-notice"]) < order.index(ids["fetch-weights"])
    assert order.index(ids["fetch-weights"]) < order.index(ids["camera"])
    demo.close()
