import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ccm.checkpoint import (
    PoseConfig,
    load_checkpoint,
    read_checkpoint,
    read_source,
    read_torch_file,
    save_checkpoint,
    sha256_of,
)

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


def test_checksum_mismatch_is_refused_before_loading(saved):
    path, _, _ = saved
    digest = sha256_of(path)
    load_checkpoint(path, expected_sha256=digest)
    load_checkpoint(path, expected_sha256=digest[:8].upper())
    wrong = f"{(int(digest[:8], 16) ^ 1):08x}"
    with pytest.raises(ValueError, match=rf"has SHA-256 {digest}, but {wrong} is expected"):
        load_checkpoint(path, expected_sha256=wrong)
    with pytest.raises(ValueError, match="is not 8 to 64 hex digits"):
        load_checkpoint(path, expected_sha256="abc")


@pytest.fixture
def pickle_with_numpy_meta(tmp_path):
    """A .pth laid out like MMPose's: a `meta` holding NumPy objects next to the state dict."""
    path = tmp_path / "td-hm_mobilenetv2_8xb64-210e_coco-256x192-55a04c35_20221016.pth"
    state = {"backbone.conv1.conv.weight": torch.ones(2, 3, 1, 1)}
    torch.save({"meta": {"sigmas": np.full(17, 0.05)}, "state_dict": state}, path)
    return path


@pytest.fixture
def torch_load_calls(monkeypatch):
    """Every `weights_only` value torch.load is called with."""
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return calls


def test_pickle_is_not_unpickled_unless_verified_or_trusted(
    pickle_with_numpy_meta, torch_load_calls
):
    path = pickle_with_numpy_meta
    with pytest.raises(ValueError, match=r"holds Python objects beyond tensors \(numpy.*--trust"):
        read_torch_file(path)
    assert torch_load_calls == [True]

    wrong = f"{(int(sha256_of(path)[:8], 16) ^ 1):08x}"
    with pytest.raises(ValueError, match=f"but {wrong} is expected"):
        read_torch_file(path, expected_sha256=wrong, trust=True)  # trust never beats a mismatch
    assert torch_load_calls == [True]

    loaded, digest = read_torch_file(path, expected_sha256=sha256_of(path)[:8])
    assert torch_load_calls == [True, True, False]
    assert digest == sha256_of(path)
    np.testing.assert_array_equal(loaded["meta"]["sigmas"], np.full(17, 0.05))

    loaded, _ = read_torch_file(path, trust=True)
    assert torch_load_calls == [True, True, False, True, False]
    assert loaded["state_dict"]["backbone.conv1.conv.weight"].sum().item() == 6.0


def test_plain_state_dicts_load_without_trust(tmp_path, torch_load_calls):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.full((2, 3), 2.0)}, path)
    loaded, _ = read_torch_file(path)
    assert torch_load_calls == [True]
    assert loaded["conv1.weight"].sum().item() == 12.0


def test_corrupted_pickles_are_refused(pickle_with_numpy_meta, tmp_path, torch_load_calls):
    data = pickle_with_numpy_meta.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated.pth is not a readable torch checkpoint"):
        read_torch_file(truncated, trust=True)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 64)
    with pytest.raises(ValueError, match=r"garbage.pth is not a readable torch checkpoint"):
        read_torch_file(garbage, trust=True)
    assert False not in torch_load_calls
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        read_torch_file(tmp_path / "absent.pth")


def test_source_record_round_trips(tmp_path):
    config = PoseConfig("ccm_mobilenetv2", input_size=SIZE)
    source = {"file": "x.pth", "sha256": "ab" * 32, "manifest": "demo"}
    path = save_checkpoint(tmp_path / "s.safetensors", config.build_model(), config, source)
    assert read_source(path) == source
    assert read_checkpoint(path, tensors=False)[0] == config


def test_heatmap_mapping_round_trips_and_old_configs_read_as_pixel_centre(saved, tmp_path):
    path, _, _ = saved
    _, tensors = read_checkpoint(path)
    msra = PoseConfig("ccm_mobilenetv2", input_size=SIZE, flip_alpha=0.75, heatmap_mapping="msra")
    assert PoseConfig.from_json(msra.to_json()) == msra
    save_file(tensors, str(tmp_path / "msra.safetensors"),
              metadata={"format": "ccm-pose/1", "config": msra.to_json()})  # fmt: skip
    loaded, _ = read_checkpoint(tmp_path / "msra.safetensors", tensors=False)
    assert loaded == msra
    # A config written before the field existed: this project's convention.
    old = json.loads(msra.to_json())
    del old["heatmap_mapping"]
    save_file(tensors, str(tmp_path / "old.safetensors"),
              metadata={"format": "ccm-pose/1", "config": json.dumps(old)})  # fmt: skip
    config, _ = read_checkpoint(tmp_path / "old.safetensors", tensors=False)
    assert (config.heatmap_mapping, config.flip_alpha) == ("pixel-center", 0.75)


def test_unknown_heatmap_mapping_is_refused():
    with pytest.raises(ValueError, match=r"unknown heatmap mapping 'center'; choose from "
                       r"pixel-center, msra, udp"):  # fmt: skip
        PoseConfig("ccm_mobilenetv2", heatmap_mapping="center")
    text = PoseConfig("ccm_mobilenetv2").to_json().replace('"pixel-center"', '"MSRA"')
    with pytest.raises(ValueError, match="unknown heatmap mapping 'MSRA'"):
        PoseConfig.from_json(text)
