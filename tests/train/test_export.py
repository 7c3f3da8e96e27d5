"""train.export: a release file with float16 weights and metrics measured on held-out data."""

from __future__ import annotations

import pytest
import torch

from ccm.checkpoint import PoseConfig, read_checkpoint, save_checkpoint
from train.coco_metrics import METRICS
from train.evaluate import EvalConfig, evaluate_model
from train.export import main
from train.synthetic.scenes import SceneConfig
from train.synthetic.writers import SyntheticConfig, generate_dataset

SIZE = (64, 64)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    scene = SceneConfig(min_size=(96, 128), max_size=(128, 160), max_people=2)
    config = SyntheticConfig(
        seed=9, num_train=0, num_val=3, num_aic=0, num_unlabeled=0, num_videos=0, scene=scene
    )
    return generate_dataset(tmp_path_factory.mktemp("held_out"), config)


def test_export_writes_half_weights_and_the_metrics_of_that_file(tmp_path, held_out, one_thread):
    torch.manual_seed(0)
    config = PoseConfig("ccm_mobilenetv2", input_size=SIZE, recipe="C 1 ep")
    model = config.build_model().eval()
    source = save_checkpoint(tmp_path / "run.safetensors", model, config)
    out = tmp_path / "release.safetensors"
    metrics = main([str(source), str(out), "--data", str(held_out.root), "--half",
                    "--split-name", "synthetic val, seed 9"])  # fmt: skip
    written, tensors = read_checkpoint(out)
    assert written.metrics == metrics and written.recipe == "C 1 ep"
    assert metrics["weights"] == "float16"
    assert metrics["split"].startswith("synthetic val, seed 9: person_keypoints_val.json")
    floats = [t for t in tensors.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert out.stat().st_size < 0.55 * source.stat().st_size
    # Float16 weights change the heatmaps by a small fraction of their range.
    shipped = written.build_model().eval()
    shipped.load_state_dict(tensors)
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        a, b = model(x)[0], shipped(x)[0]
    assert (a - b).abs().max().item() < 2e-3 * a.abs().max().item() + 1e-6
    # The recorded numbers are those of the shipped file, not of the source.
    measured = evaluate_model(
        shipped, written, held_out.val_annotations, held_out.val_images, EvalConfig()
    )
    assert {k: metrics[k] for k in METRICS} == pytest.approx(measured, abs=5e-5)


def test_export_refuses_to_overwrite_its_source(tmp_path, held_out):
    config = PoseConfig("ccm_mobilenetv2", input_size=SIZE)
    source = save_checkpoint(tmp_path / "run.safetensors", config.build_model(), config)
    with pytest.raises(SystemExit) as exit_info:
        main([str(source), str(source), "--data", str(held_out.root), "--split-name", "x"])
    assert exit_info.value.code == 2
