"""A CCM trained from a public backbone: an MMPose-format HRNet-W32 file written here, converted
by `weights import`, its encoder taken by `python -m train --backbone-weights` for ccm_hrnet_w32,
then the whole ACHU->CH schedule on tiny synthetic data."""

from __future__ import annotations

import argparse
import csv
import math
import shutil
from dataclasses import replace

import pytest
import torch

from ccm.checkpoint import load_checkpoint
from ccm.model import build_model
from realtime.weights.cli import add_weights_commands
from train.__main__ import main
from train.loop import build_training_model
from train.run_config import DataConfig, TrainConfig, build_stages
from train.synthetic.scenes import SceneConfig
from train.synthetic.writers import SyntheticConfig, generate_dataset

SIZE = (64, 32)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def public_hrnet(tmp_path_factory):
    """An HRNet-W32 pose model saved the way MMPose 1.x saves one, and that model."""
    torch.manual_seed(5)
    model = build_model("hrnet_w32", input_size=SIZE).eval()
    state = dict(model.state_dict()) | {"data_preprocessor.mean": torch.zeros(3, 1, 1)}
    path = tmp_path_factory.mktemp("public") / "td-hm_hrnet-w32_dark-8xb64-210e_coco-256x192.pth"
    torch.save({"meta": {"epoch": 210}, "state_dict": state}, path)
    return path, model


@pytest.fixture(scope="module")
def imported(public_hrnet, tmp_path_factory):
    """`python app.py weights import FILE --from mmpose --trust --out ...` (the file is not in the
    manifest, so unpickling it in full needs --trust)."""
    path, _ = public_hrnet
    out = tmp_path_factory.mktemp("weights") / "hrnet-w32-dark.safetensors"
    root = argparse.ArgumentParser(prog="app.py")
    add_weights_commands(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(
        ["weights", "import", str(path), "--from", "mmpose", "--trust", "--out", str(out)]
    )
    assert args.run(args) == 0
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    scene = SceneConfig(min_size=(96, 128), max_size=(128, 160), max_people=2)
    config = SyntheticConfig(
        seed=4, num_train=3, num_val=1, num_aic=2, num_unlabeled=0, num_videos=0, scene=scene
    )
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), config)


def test_the_run_starts_from_the_public_encoder_with_fresh_heads(public_hrnet, imported, tmp_path):
    _, public = public_hrnet
    config = TrainConfig(
        out_dir=str(tmp_path),
        arch="ccm_hrnet_w32",
        stages=build_stages("C", "1"),
        data=DataConfig(),
        input_size=SIZE,
        backbone_weights=str(imported),
    )
    torch.manual_seed(0)
    model = build_training_model(config)
    torch.manual_seed(0)
    fresh = build_model("ccm_hrnet_w32", input_size=SIZE)

    start = model.backbone.state_dict()
    assert start.keys() == public.backbone.state_dict().keys()
    for key, value in public.backbone.state_dict().items():
        assert torch.equal(start[key], value), key
    # Everything after the encoder (Context Mixer, cascade, heads) is the CCM's own, fresh.
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert rest and rest.keys() == {k for k in fresh.state_dict() if not k.startswith("backbone.")}
    for key, value in rest.items():
        assert torch.equal(value, fresh.state_dict()[key]), key

    wrong = replace(config, arch="ccm_resnet50")
    with pytest.raises(ValueError, match=r"is a hrnet_w32 checkpoint \(a hrnet_w32 backbone\); "):
        build_training_model(wrong)


def test_achu_ch_end_to_end_from_the_imported_backbone(imported, synthetic, tmp_path, capsys):
    # U: the labelled training images stand in for pseudo-labelled ones (the same COCO format
    # `python -m train.pseudo_label` writes); H is mined from the synthetic detections.
    pseudo = tmp_path / "pseudo_labels.json"
    shutil.copy(synthetic.train_annotations, pseudo)
    out = tmp_path / "run"
    code = main(
        ["--data", str(synthetic.root), "--arch", "ccm_hrnet_w32",
         "--backbone-weights", str(imported), "--schedule", "ACHU->CH", "--epochs", "1,1",
         "--pseudo-labels", str(pseudo), "--pseudo-images", str(synthetic.train_images),
         "--input-size", "64x32", "--batch-size", "4", "--workers", "0", "--seed", "1",
         "--out", str(out), "--device", "cpu"]
    )  # fmt: skip

    assert code == 0
    assert "(finished)" in capsys.readouterr().out
    model, config = load_checkpoint(out / "last.safetensors")
    assert (config.arch, config.input_size) == ("ccm_hrnet_w32", SIZE)
    assert config.recipe.startswith("ACHU->CH (ACHU 1 ep lr 0.001")
    assert "CH 1 ep lr 0.0001" in config.recipe
    assert config.recipe.endswith(f"backbone {imported.name}")
    assert (out / "stage1_ACHU.safetensors").is_file()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(r["stage"], r["letters"]) for r in rows] == [("1", "ACHU"), ("2", "CH")]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    assert int(rows[1]["step"]) > int(rows[0]["step"]) >= 1
    with torch.no_grad():
        heatmaps = model(torch.zeros(2, 3, *SIZE))
    assert heatmaps.shape == (2, 17, 16, 8) and torch.isfinite(heatmaps).all()
