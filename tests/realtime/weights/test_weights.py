"""The manifest, `weights list|fetch|import|verify`, and the choice of checkpoints.

Downloads come from an http.server on 127.0.0.1 in a thread (with HTTP Range support); nothing
else touches the network.
"""

import dataclasses
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2
from weights_fixtures import (
    RangeServer,
    direct_to_loopback,
    run_cli,
    serve_files,
    write_manifest,
)

from ccm.checkpoint import (
    PoseConfig,
    load_checkpoint,
    read_checkpoint,
    read_source,
    save_checkpoint,
    sha256_of,
)
from ccm.model import build_model, load_backbone_weights
from realtime.stream.assemble import default_detector_weights, default_pose_checkpoint
from realtime.weights.fetch import fetch
from realtime.weights.manifest import MANIFEST_PATH, load_manifest
from realtime.weights.verify import best_present, entry_status

SIZE = (64, 32)


pytestmark = pytest.mark.usefixtures("one_thread")
server = pytest.fixture(scope="module")(serve_files)
no_proxy = pytest.fixture(autouse=True)(direct_to_loopback)


@pytest.fixture(scope="module")
def mmpose_file(tmp_path_factory):
    """An MMPose-layout SimpleBaseline-MobileNetV2 .pth (NumPy objects in its meta), and the
    model it holds."""
    torch.manual_seed(0)
    model = build_model("simplebaseline_mobilenetv2", input_size=SIZE).eval()
    state = dict(model.state_dict()) | {"data_preprocessor.mean": torch.zeros(3, 1, 1)}
    meta = {"dataset_meta": {"sigmas": np.full(17, 0.05)}, "epoch": 210}
    path = tmp_path_factory.mktemp("public") / "td-hm_mobilenetv2_8xb64-coco-256x192.pth"
    torch.save({"meta": meta, "state_dict": state}, path)
    return path, model


def pose_entry(path: Path, **extra) -> dict:
    return {
        "name": "pub-mbv2",
        "kind": "pose",
        "arch": "simplebaseline_mobilenetv2",
        "layout": "mmpose",
        "input_size": list(SIZE),
        "file": path.name,
        "sha256": sha256_of(path)[:8],
        "source_ap": 0.648,
        "ap_metric": "COCO val2017",
        "unbiased": False,
        "flip_alpha": 0.75,
        "sigma": 2.0,
    } | extra


def test_project_manifest_lists_the_known_checkpoints():
    manifest = load_manifest(MANIFEST_PATH)
    public = [e for e in manifest.entries if not e.demo]
    by_kind = {k: [e for e in public if e.kind == k] for k in ("pose", "backbone")}
    pose = {e.arch: e for e in by_kind["pose"]}
    assert len(by_kind["pose"]) == 6 and len(by_kind["backbone"]) == 2
    assert sorted(e.source_ap for e in by_kind["pose"]) == [0.648, 0.718, 0.746, 0.75, 0.757, 0.772]
    assert pose["hrnet_w48"].input_size == (384, 288) and pose["hrnet_w48"].sigma == 3.0
    assert pose["hrnet_w48"].unbiased and not pose["simplebaseline_resnet50"].unbiased
    for entry in public:
        assert entry.url.endswith("/" + entry.file)
        if entry.layout in ("mmpose", "torchvision"):  # the hex in the name is a SHA-256 prefix
            assert entry.sha256 in entry.file and len(entry.sha256) == 8
        if entry.kind == "pose":
            assert entry.flip_alpha == 0.75 and entry.license == "Apache-2.0"
    assert manifest.get("yolo11n").sha256.startswith("0ebbc80d")
    assert len(manifest.get("yolo11m-pose").sha256) == 64


def test_committed_demo_weights_are_listed_verified_and_picked():
    manifest = load_manifest(MANIFEST_PATH)
    demo = {e.kind: e for e in manifest.entries if e.demo}
    assert sorted(demo) == ["detector", "pose"]
    for entry in demo.values():
        # Committed with the code, so no URL; a full hash and a metric measured here.
        assert entry.url == "" and len(entry.sha256) == 64
        assert entry.measured_ap is not None and "seed" in entry.measured_on
        assert entry_status(entry, MANIFEST_PATH.parent).state == "verified"
    # The demo pose file's own metadata holds the AP the manifest states.
    config, _ = read_checkpoint(MANIFEST_PATH.parent / demo["pose"].file, tensors=False)
    assert config.metrics["AP"] == pytest.approx(demo["pose"].measured_ap, abs=5e-4)
    assert (config.arch, config.input_size) == (demo["pose"].arch, demo["pose"].input_size)
    assert "seed" in str(config.metrics["split"]) and config.metrics["weights"] == "float16"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"colour": "red"}, r"'x': unknown keys \['colour'\]"),
        ({"kind": "segmenter"}, r"'x': kind 'segmenter' is not one of"),
        ({"sha256": "xyz"}, r"'xyz' is not 8 to 64 hex digits"),
        ({"arch": "resnet9"}, r"'x': a pose checkpoint needs an arch"),
        ({"layout": "timm"}, r"'x': a pose checkpoint's layout is one of"),
        ({"heatmap_mapping": "corner"}, r"'x': heatmap_mapping 'corner' is not one of"),
        ({"demo": "yes"}, r"'x': demo must be true or false"),
    ],
)
def test_bad_manifest_entries_are_refused(tmp_path, fields, message):
    entry = {"name": "x", "kind": "pose", "arch": "hrnet_w32", "layout": "mmpose", "file": "x.pth"}
    entry |= {"input_size": [256, 192]} | fields
    with pytest.raises(ValueError, match=message):
        load_manifest(write_manifest(tmp_path, entry))


def test_a_name_listed_twice_is_refused(tmp_path):
    entry = {"name": "x", "kind": "detector", "arch": "y", "layout": "ultralytics", "file": "x.pt"}
    with pytest.raises(ValueError, match="name listed more than once: x"):
        load_manifest(write_manifest(tmp_path, entry, entry | {"file": "z.pt"}))


def detector_file(server: RangeServer, name: str, size: int, seed: int) -> tuple[bytes, dict]:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    server.files[name] = data
    entry = {
        "name": Path(name).stem,
        "kind": "detector",
        "arch": "yolo-test",
        "layout": "ultralytics",
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "url": server.url(name),
    }
    return data, entry


@pytest.mark.parametrize("honour_range", [True, False])
def test_fetch_resumes_a_partial_download(tmp_path, server, honour_range):
    data, entry = detector_file(server, f"det-{honour_range}.pt", 300_000, seed=1)
    manifest = load_manifest(write_manifest(tmp_path, entry))
    (tmp_path / f"{entry['file']}.part").write_bytes(data[:100_000])
    server.honour_range = honour_range
    server.requests.clear()
    try:
        path = fetch(manifest.get(entry["name"]), tmp_path)
    finally:
        server.honour_range = True

    assert path == tmp_path / entry["file"] and path.read_bytes() == data
    assert not (tmp_path / f"{entry['file']}.part").exists()
    # Resumed: only the missing 200,000 bytes travel; a server ignoring Range sends them all.
    sent = 200_000 if honour_range else 300_000
    assert server.requests == [(f"/{entry['file']}", "bytes=100000-", sent)]
    assert entry_status(manifest.get(entry["name"]), tmp_path).state == "verified"


def test_fetch_refuses_a_download_with_another_hash(tmp_path, server):
    data, entry = detector_file(server, "det-changed.pt", 50_000, seed=2)
    entry["sha256"] = hashlib.sha256(data[::-1]).hexdigest()
    manifest = load_manifest(write_manifest(tmp_path, entry))

    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64}, but the manifest lists"):
        fetch(manifest.get("det-changed"), tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.toml"]
    no_hash = load_manifest(write_manifest(tmp_path, entry | {"sha256": ""}))
    with pytest.raises(ValueError, match="lists no SHA-256 for det-changed.*--trust"):
        fetch(no_hash.get("det-changed"), tmp_path)


def test_fetch_converts_a_pose_checkpoint_after_verifying_it(
    tmp_path, server, mmpose_file, monkeypatch
):
    path, model = mmpose_file
    server.files[path.name] = path.read_bytes()
    manifest = load_manifest(write_manifest(tmp_path, pose_entry(path, url=server.url(path.name))))
    calls = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k)
    )

    out = fetch(manifest.get("pub-mbv2"), tmp_path)

    assert out == tmp_path / "pub-mbv2.safetensors"
    assert calls == [True, False]  # full unpickling only after the SHA-256 matched
    loaded, config = load_checkpoint(out)
    assert (config.arch, config.input_size, config.unbiased, config.flip_alpha) == (
        "simplebaseline_mobilenetv2",
        SIZE,
        False,
        0.75,
    )
    assert config.metrics == {"AP": 0.648, "split": "COCO val2017"}
    assert config.heatmap_mapping == "msra"  # MMPose's MSRAHeatmap codec, from the file name
    assert read_source(out)["sha256"] == sha256_of(path)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert entry_status(manifest.get("pub-mbv2"), tmp_path).state == "verified"
    server.requests.clear()
    assert fetch(manifest.get("pub-mbv2"), tmp_path) == out  # present: no second download
    assert server.requests == []
    # A conversion that decodes in the wrong heatmap convention is not used.
    stale = dataclasses.replace(config, heatmap_mapping="pixel-center")
    save_checkpoint(out, loaded, stale, read_source(out))
    status = entry_status(manifest.get("pub-mbv2"), tmp_path)
    assert status.state == "invalid"
    assert "heatmap mapping 'pixel-center', the manifest lists 'msra'" in status.detail


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A ccm-pose checkpoint file (the cheapest arch), to copy under several names."""
    torch.manual_seed(0)
    config = PoseConfig("ccm_mobilenetv2", input_size=SIZE, metrics={"AP": 0.5, "split": "t"})
    folder = tmp_path_factory.mktemp("tiny")
    return save_checkpoint(folder / "tiny.safetensors", config.build_model(), config)


def ccm_entry(name: str, checkpoint: Path, ap: float, **extra) -> dict:
    return {
        "name": name,
        "kind": "pose",
        "arch": "ccm_mobilenetv2",
        "layout": "ccm",
        "input_size": list(SIZE),
        "file": f"{name}.safetensors",
        "sha256": sha256_of(checkpoint),
        "measured_ap": ap,
        "measured_on": "synthetic val",
    } | extra


def test_best_present_picks_the_highest_verified_ap(tmp_path, tiny_checkpoint, caplog):
    wrong = "0" * 64
    write_manifest(
        tmp_path,
        ccm_entry("a", tiny_checkpoint, 0.70),
        ccm_entry("b", tiny_checkpoint, 0.80, sha256=wrong),  # present, hash differs
        ccm_entry("c", tiny_checkpoint, 0.75),
        ccm_entry("d", tiny_checkpoint, 0.90),  # absent
        ccm_entry("e", tiny_checkpoint, 0.85, sha256=""),  # present, no hash to check
    )
    for name in "abce":
        shutil.copy(tiny_checkpoint, tmp_path / f"{name}.safetensors")

    best = best_present("pose", tmp_path)
    assert best is not None and best.entry.name == "c" and best.path == tmp_path / "c.safetensors"

    caplog.set_level(logging.INFO, logger="realtime.weights.verify")
    assert default_pose_checkpoint(tmp_path) == tmp_path / "c.safetensors"
    assert f"pose checkpoint: {tmp_path / 'c.safetensors'} (c, ccm_mobilenetv2" in caplog.text
    assert "not using" in caplog.text and "b.safetensors: mismatch" in caplog.text

    for name in "ac":
        (tmp_path / f"{name}.safetensors").unlink()
    assert best_present("pose", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no usable pose checkpoint"):
        default_pose_checkpoint(tmp_path)
    # An unlisted checkpoint (a local training run) is used, with a warning, when nothing
    # listed is; it is safetensors, so loading it runs no code.
    shutil.copy(tiny_checkpoint, tmp_path / "my-run.safetensors")
    assert default_pose_checkpoint(tmp_path) == tmp_path / "my-run.safetensors"
    assert "not in the manifest, so not verified" in caplog.text


def test_demo_weights_come_after_every_real_checkpoint(tmp_path, tiny_checkpoint, caplog):
    write_manifest(
        tmp_path,
        ccm_entry("demo", tiny_checkpoint, 0.95, demo=True),
        ccm_entry("coco", tiny_checkpoint, 0.70),
    )
    for name in ("demo", "coco"):
        shutil.copy(tiny_checkpoint, tmp_path / f"{name}.safetensors")
    caplog.set_level(logging.INFO, logger="realtime.weights.verify")
    assert default_pose_checkpoint(tmp_path) == tmp_path / "coco.safetensors"
    assert "demo weights" not in caplog.text
    (tmp_path / "coco.safetensors").unlink()
    assert default_pose_checkpoint(tmp_path) == tmp_path / "demo.safetensors"
    assert f"pose checkpoint: {tmp_path / 'demo.safetensors'} (demo, ccm_mobilenetv2" in caplog.text


def test_detectors_are_picked_only_when_verified(tmp_path, server):
    small, small_entry = detector_file(server, "small.pt", 1_000, seed=3)
    big, big_entry = detector_file(server, "big.pt", 2_000, seed=4)
    write_manifest(
        tmp_path, small_entry | {"source_ap": 0.40}, big_entry | {"source_ap": 0.50, "sha256": ""}
    )
    (tmp_path / "big.pt").write_bytes(big)
    (tmp_path / "other.pt").write_bytes(b"unlisted")
    with pytest.raises(FileNotFoundError, match="no verified detector weights"):
        default_detector_weights(tmp_path)
    (tmp_path / "small.pt").write_bytes(small)
    assert default_detector_weights(tmp_path) == tmp_path / "small.pt"


def test_list_and_verify_report_every_file(tmp_path, mmpose_file, tiny_checkpoint, capsys):
    path, _ = mmpose_file
    good, good_entry = b"weights", {"name": "det-ok", "file": "det-ok.pt"}
    detectors = [
        good_entry | {"sha256": hashlib.sha256(good).hexdigest()},
        {"name": "det-bad", "file": "det-bad.pt", "sha256": hashlib.sha256(b"x").hexdigest()},
        {"name": "det-absent", "file": "det-absent.pt", "sha256": "12345678"},
    ]
    detectors = [d | {"kind": "detector", "arch": "y", "layout": "ultralytics"} for d in detectors]
    write_manifest(tmp_path, pose_entry(path), *detectors)
    shutil.copy(path, tmp_path / path.name)
    (tmp_path / "det-ok.pt").write_bytes(good)
    (tmp_path / "det-bad.pt").write_bytes(b"tampered")
    shutil.copy(tiny_checkpoint, tmp_path / "my-run.safetensors")

    assert run_cli("list", "--weights-dir", str(tmp_path)) == 0
    listing = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in listing.splitlines() if line}
    assert rows["pub-mbv2"][4:6] == ["0.648", "not"]  # "not converted"
    assert rows["det-ok"][5] == "verified" and rows["det-bad"][5] == "mismatch"
    assert rows["det-absent"][5] == "absent"
    assert "my-run.safetensors  ccm_mobilenetv2 64x32, AP 0.5" in listing

    assert run_cli("fetch", "pub-mbv2", "--weights-dir", str(tmp_path)) == 0  # converts only
    capsys.readouterr()
    assert run_cli("verify", "--weights-dir", str(tmp_path)) == 1
    report = capsys.readouterr().out
    lines = {tuple(line.split()[:3]) for line in report.splitlines()}
    assert ("verified", "pub-mbv2", "pub-mbv2.safetensors") in lines
    assert ("verified", "pub-mbv2", path.name) in lines
    assert ("verified", "det-ok", "det-ok.pt") in lines
    assert ("mismatch", "det-bad", "det-bad.pt") in lines
    assert ("unlisted", "-", "my-run.safetensors") in lines
    assert hashlib.sha256(b"tampered").hexdigest() in report
    assert "1 file(s) failed verification" in report

    (tmp_path / "det-bad.pt").unlink()
    assert run_cli("verify", "--weights-dir", str(tmp_path)) == 0


def test_import_mmpose_file_listed_unlisted_and_into_ccm(tmp_path, mmpose_file, capsys):
    path, model = mmpose_file
    listed_dir, other_dir = tmp_path / "listed", tmp_path / "other"
    write_manifest(listed_dir, pose_entry(path))
    write_manifest(other_dir, pose_entry(path, sha256="0" * 8, name="elsewhere", file="e.pth"))

    # Listed by its hash: verified, so it may be unpickled without --trust.
    assert run_cli("import", str(path), "--from", "mmpose", "--weights-dir", str(listed_dir)) == 0
    out = listed_dir / "pub-mbv2.safetensors"
    assert entry_status(load_manifest(listed_dir / "manifest.toml").entries[0], listed_dir).usable
    assert load_checkpoint(out)[1].metrics["AP"] == 0.648

    # Not listed: the NumPy objects in its meta need --trust.
    args = ("import", str(path), "--from", "mmpose", "--weights-dir", str(other_dir))
    with pytest.raises(ValueError, match="not verified against the manifest.*--trust"):
        run_cli(*args)
    assert run_cli(*args, "--trust", "--input-size", "64x32") == 0
    _, config = load_checkpoint(other_dir / f"{path.stem}.safetensors")
    assert (config.unbiased, config.flip_alpha) == (False, 0.75)  # guessed from the name
    with pytest.raises(ValueError, match="is pub-mbv2, a mmpose file, not hrnet"):
        run_cli("import", str(path), "--from", "hrnet", "--weights-dir", str(listed_dir))

    # Into a CCM arch: the public backbone, fresh heads, ready for `python -m train --init`.
    capsys.readouterr()
    assert run_cli(*args, "--trust", "--arch", "ccm_mobilenetv2", "--input-size", "64x32") == 0
    printed = capsys.readouterr().out
    init = other_dir / "init" / f"{path.stem}_ccm_mobilenetv2.safetensors"
    assert f"-> {init} (ccm_mobilenetv2, 64x32)" in printed
    assert "taken from the file: backbone (" in printed
    assert (
        "freshly initialised: head.mixers (120), head.final_layer (2), aux_head.mixers (120), "
        "aux_head.final_layer (2)" in printed
    )
    assert (
        "dropped from the file: data_preprocessor (1), head.deconv_layers (15), "
        "head.final_layer (2)" in printed
    )
    ccm, config = load_checkpoint(init)
    assert config.metrics == {} and config.flip_alpha == 0.0
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(ccm.backbone.state_dict()[key], value, rtol=0, atol=0)


def test_import_torchvision_file_gives_backbone_weights(tmp_path, capsys):
    torch.manual_seed(0)
    classifier = mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2-7ebf99e0.pth"
    torch.save(classifier.state_dict(), path)
    weights = tmp_path / "w"
    write_manifest(weights, {"name": "n", "kind": "detector", "arch": "y",
                             "layout": "ultralytics", "file": "n.pt"})  # fmt: skip

    assert run_cli("import", str(path), "--from", "torchvision", "--weights-dir", str(weights)) == 0

    out = weights / "backbones" / "mobilenet_v2-7ebf99e0.safetensors"
    assert f"-> {out} (mobilenetv2 backbone weights)" in capsys.readouterr().out
    model = build_model("ccm_mobilenetv2", input_size=SIZE)
    report = load_backbone_weights(model.backbone, out)
    assert report.missing == () and report.unexpected == ()
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = nn.Sequential(*classifier.features).eval()(x)
        torch.testing.assert_close(model.backbone.eval()(x)[1], reference, rtol=0, atol=0)
