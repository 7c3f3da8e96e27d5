import json

import pytest
import torch
from safetensors.torch import save_file

from ccm.checkpoint import PoseConfig, load_checkpoint, read_checkpoint, save_checkpoint, sha256_of

SIZE = (128, 96)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    config = PoseConfig("ccm_mobilenetv2", input_size=SIZE, recipe="C", metrics={"AP": 0.5})
    model = config.build_model().eval()
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", model, config)
    return path, model, config


def test_round_trip_rebuilds_the_same_model(saved):
    path, model, config = saved
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == config
    assert loaded_config.heatmap_size == (32, 24)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training
    assert len(sha256_of(path)) == 64


def test_truncated_file_is_refused(saved, tmp_path):
    path, _, _ = saved
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_tensors_of_another_arch_are_refused(tmp_path):
    other = PoseConfig("hrnet_w32", input_size=SIZE).build_model()
    claimed = PoseConfig("ccm_mobilenetv2", input_size=SIZE)
    path = tmp_path / "liar.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path),
              metadata={"format": "ccm-pose/1", "config": claimed.to_json()})  # fmt: skip
    with pytest.raises(ValueError, match=r"does not match its model: missing \(\d+\).*unexpected"):
        load_checkpoint(path)


def test_wrong_keypoint_count_is_a_shape_mismatch(saved, tmp_path):
    path, _, config = saved
    _, tensors = read_checkpoint(path)
    wrong = PoseConfig("ccm_mobilenetv2", num_keypoints=14, input_size=SIZE)
    save_file(
        tensors,
        str(tmp_path / "k14.safetensors"),
        metadata={"format": "ccm-pose/1", "config": wrong.to_json()},
    )
    with pytest.raises(
        ValueError,
        match=r"shape mismatch \(4\): aux_head.final_layer.bias: file \(17,\) vs model \(14,\)",
    ):
        load_checkpoint(tmp_path / "k14.safetensors")


def test_files_without_our_config_are_refused(saved, tmp_path):
    path, _, _ = saved
    _, tensors = read_checkpoint(path)
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="carries no ccm-pose config"):
        load_checkpoint(tmp_path / "bare.safetensors")
    data = json.loads(PoseConfig("ccm_mobilenetv2").to_json()) | {"colour": "red"}
    save_file(
        tensors,
        str(tmp_path / "odd.safetensors"),
        metadata={"format": "ccm-pose/1", "config": json.dumps(data)},
    )
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        load_checkpoint(tmp_path / "odd.safetensors")
