"""Public checkpoint layouts, generated here with the public key names and shapes, converted back.

Each public state dict is one of our models' state dicts renamed by the documented rules (plus
the keys the public files carry that our models lack); converting it must give our model back
exactly, with nothing missing or unexpected.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.resnet import Bottleneck

from ccm.backbones.hrnet import HighResolutionModule
from ccm.checkpoint import sha256_of
from ccm.importers import (
    PublicTraining,
    convert_public_pose,
    guess_training,
    import_backbone,
    import_pose_checkpoint,
)
from ccm.model import build_model, load_backbone_weights

SIZE = (64, 32)  # H, W: the smallest crops the HRNet fusions accept, to keep the tests fast
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def randomised(arch: str, seed: int) -> nn.Module:
    """A model whose BN statistics are not the identity, so outputs depend on every buffer."""
    torch.manual_seed(seed)
    model = build_model(arch, input_size=SIZE).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(1000)
    return model


def mmpose_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """MMPose 1.x: our names (backbone.*, head.*) plus the data preprocessor's buffers."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state | {"data_preprocessor.mean": MEAN, "data_preprocessor.std": STD}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hrnet_w32(one_thread):
    return randomised("hrnet_w32", 0)


@pytest.fixture(scope="module")
def crops():
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))


def assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_mmpose_hrnet_w32_converts_exactly(hrnet_w32, crops):
    state = mmpose_layout(hrnet_w32)
    model, source_arch, report = convert_public_pose(state, "mmpose", input_size=SIZE)

    assert source_arch == "hrnet_w32"
    assert report.dropped == ("data_preprocessor.mean", "data_preprocessor.std")
    assert report.initialised == ()
    # every parameter and BN statistic; the BN counters are left out of reports
    assert set(report.taken) == {k for k in state if "_batches_" not in k and "data_" not in k}
    assert report.summary() == (
        "taken from the file: backbone (1,460), head.final_layer (2); "
        "dropped from the file: data_preprocessor (2)"
    )
    assert_same_outputs(model, hrnet_w32, crops)


@pytest.mark.parametrize(
    ("arch", "deconv_keys"),
    [("simplebaseline_resnet50", 15), ("simplebaseline_mobilenetv2", 15)],
)
def test_mmpose_simplebaseline_heads_convert_exactly(arch, deconv_keys, crops):
    source = randomised(arch, 1)
    state = mmpose_layout(source)
    layers = {k.split(".")[2] for k in state if k.startswith("head.deconv_layers.")}
    assert layers == {"0", "1", "3", "4", "6", "7"}  # the public head's layout

    model, source_arch, report = convert_public_pose(state, "mmpose", input_size=SIZE)

    assert source_arch == arch
    assert sum(k.startswith("head.deconv_layers.") for k in report.taken) == deconv_keys
    assert report.initialised == ()
    assert_same_outputs(model, source, crops)


def test_mmpose_legacy_keypoint_head_is_renamed(crops):
    source = randomised("simplebaseline_mobilenetv2", 2)
    legacy = {
        k.replace("head.", "keypoint_head.", 1) if k.startswith("head.") else k: v
        for k, v in source.state_dict().items()
    }
    assert any(k.startswith("keypoint_head.deconv_layers.") for k in legacy)

    model, _, report = convert_public_pose(legacy, "mmpose", input_size=SIZE)

    assert report.dropped == () and report.initialised == ()
    assert_same_outputs(model, source, crops)


def test_official_hrnet_with_module_prefix(hrnet_w32, crops):
    official = {
        "module." + k.removeprefix("backbone.").removeprefix("head."): v
        for k, v in hrnet_w32.state_dict().items()
    }
    assert {"module.final_layer.weight", "module.stage4.0.fuse_layers.3.0.0.0.weight"} <= set(
        official
    )

    model, source_arch, report = convert_public_pose(official, "hrnet", input_size=SIZE)

    assert source_arch == "hrnet_w32" and report.dropped == () and report.initialised == ()
    assert_same_outputs(model, hrnet_w32, crops)


def test_mmpose_hrnet_into_ccm_keeps_backbone_and_starts_heads_fresh(hrnet_w32, crops):
    model, source_arch, report = convert_public_pose(
        mmpose_layout(hrnet_w32), "mmpose", arch="ccm_hrnet_w32", input_size=SIZE, seed=5
    )

    assert source_arch == "hrnet_w32"
    assert {k.split(".")[0] for k in report.taken} == {"backbone"}
    assert {k.split(".")[0] for k in report.initialised} == {"head", "aux_head"}
    assert report.dropped == (
        "data_preprocessor.mean",
        "data_preprocessor.std",
        "head.final_layer.weight",
        "head.final_layer.bias",
    )
    with torch.no_grad():
        ours, public = model.backbone(crops), hrnet_w32.backbone(crops)
    for a, b in zip(ours, public, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The heads are exactly a fresh initialisation with the given seed.
    torch.manual_seed(5)
    fresh = build_model("ccm_hrnet_w32", input_size=SIZE).state_dict()
    for key in report.initialised:
        torch.testing.assert_close(model.state_dict()[key], fresh[key], rtol=0, atol=0)
    assert model(crops).shape == (2, 17, 16, 8)


def test_wrong_arch_is_refused(hrnet_w32):
    with pytest.raises(
        ValueError,
        match=r"holds a hrnet_w32 model \(hrnet_w32 backbone\); ccm_resnet50 needs a resnet50",
    ):
        convert_public_pose(mmpose_layout(hrnet_w32), "mmpose", "ccm_resnet50", SIZE)
    with pytest.raises(ValueError, match="hrnet_w48 needs a hrnet_w48 backbone"):
        convert_public_pose(mmpose_layout(hrnet_w32), "mmpose", "hrnet_w48", SIZE)


def test_mmpose_file_with_numpy_meta_imports_when_its_hash_is_known(tmp_path, crops):
    source = randomised("simplebaseline_mobilenetv2", 4)
    path = tmp_path / "td-hm_mobilenetv2_8xb64-210e_coco-256x192.pth"
    meta = {"dataset_meta": {"sigmas": np.full(17, 0.05)}, "epoch": 210}
    torch.save({"meta": meta, "state_dict": mmpose_layout(source)}, path)

    imported = import_pose_checkpoint(
        path, "mmpose", input_size=SIZE, expected_sha256=sha256_of(path)[:8]
    )

    assert imported.config.arch == "simplebaseline_mobilenetv2"
    assert (imported.config.unbiased, imported.config.flip_alpha) == (False, 0.75)
    assert imported.config.heatmap_mapping == "msra"  # MSRAHeatmap: crop x = 4 x heatmap x
    assert imported.source["sha256"] == sha256_of(path)
    assert_same_outputs(imported.model, source, crops)
    # Into a CCM arch the heads are fresh and will be trained here: this project's convention.
    fresh = import_pose_checkpoint(
        path, "mmpose", arch="ccm_mobilenetv2", input_size=SIZE, expected_sha256=sha256_of(path)
    )
    assert (fresh.config.heatmap_mapping, fresh.config.flip_alpha) == ("pixel-center", 0.0)


def test_training_conventions_guessed_from_file_names():
    dark = guess_training("td-hm_hrnet-w48_dark-8xb32-210e_coco-384x288-39c3c381.pth", (384, 288))
    udp = guess_training("td-hm_hrnet-w32_udp-8xb64-210e_coco-256x192.pth", (256, 192))
    plain = guess_training("pose_hrnet_w32_256x192.pth", (256, 192))
    assert (dark.unbiased, dark.flip_alpha, dark.sigma) == (True, 0.75, 3.0)
    assert (udp.unbiased, udp.flip_alpha, udp.sigma) == (True, 0.0, 2.0)
    assert (plain.unbiased, plain.flip_alpha, plain.sigma) == (False, 0.75, 2.0)
    assert (dark.heatmap_mapping, udp.heatmap_mapping, plain.heatmap_mapping) == (
        "msra",
        "udp",
        "msra",
    )
    with pytest.raises(ValueError, match="unknown heatmap mapping 'dark'"):
        PublicTraining(True, 0.75, heatmap_mapping="dark")


def test_torchvision_resnet50_imagenet_file_becomes_backbone_weights(tmp_path):
    torch.manual_seed(6)
    classifier = resnet50(weights=None).eval()
    path = tmp_path / "resnet50-11ad3fa6.pth"
    torch.save(classifier.state_dict(), path)  # torchvision's own layout, fc included

    imported = import_backbone(path, "torchvision", arch="simplebaseline_resnet50")

    assert imported.backbone == "resnet50"
    assert imported.report.dropped == ("fc.weight", "fc.bias")
    torch.save(imported.tensors, tmp_path / "backbone.pt")
    model = build_model("simplebaseline_resnet50", input_size=SIZE).eval()
    report = load_backbone_weights(model.backbone, tmp_path / "backbone.pt")
    assert report.missing == () and report.unexpected == ()
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    features = nn.Sequential(*list(classifier.children())[:-2])
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x)[1], features(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds resnet50 weights; ccm_resnet152 needs a resnet152"):
        import_backbone(path, "torchvision", arch="ccm_resnet152")


def projection(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


def timm_hrnet_w32(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """timm's `hrnet_w32` layout: the pose backbone's keys, every stage-4 fusion of its last
    module, and the classification head; saved without BN counters."""
    state = dict(backbone.state_dict())
    channels = (32, 64, 128, 256)
    full = HighResolutionModule(channels, 4, multiscale_output=True)
    for key, value in full.state_dict().items():
        if key.startswith("fuse_layers.") and not key.startswith("fuse_layers.0."):
            state[f"stage4.2.{key}"] = value
    head = nn.Module()
    head.incre_modules = nn.ModuleList(
        nn.Sequential(Bottleneck(c, h, downsample=projection(c, 4 * h)))
        for c, h in zip(channels, (32, 64, 128, 256), strict=True)
    )
    head.downsamp_modules = nn.ModuleList(
        nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU())
        for c in (128, 256, 512)
    )
    head.final_layer = nn.Sequential(nn.Conv2d(1024, 2048, 1), nn.BatchNorm2d(2048), nn.ReLU())
    head.classifier = nn.Linear(2048, 1000)
    state |= head.state_dict()
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def timm_state(hrnet_w32):
    return timm_hrnet_w32(hrnet_w32.backbone)


def test_timm_hrnet_w32_drops_and_reports_its_classification_parts(tmp_path, hrnet_w32, timm_state):
    path = tmp_path / "hrnetv2_w32-90d8c5fb.pth"
    torch.save(timm_state, path)

    imported = import_backbone(path, "timm", arch="ccm_hrnet_w32")

    assert imported.backbone == "hrnet_w32"
    dropped = {
        ".".join(k.split(".")[:4]) if k.startswith("stage4") else k.split(".")[0]
        for k in imported.report.dropped
    }
    assert dropped == {
        "incre_modules",
        "downsamp_modules",
        "final_layer",
        "classifier",
        "stage4.2.fuse_layers.1",
        "stage4.2.fuse_layers.2",
        "stage4.2.fuse_layers.3",
    }
    own = hrnet_w32.backbone.state_dict()
    assert set(imported.tensors) == set(own)  # BN counters filled in
    for key, value in own.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(imported.tensors[key], value, rtol=0, atol=0)
    torch.save(imported.tensors, tmp_path / "backbone.pt")
    model = build_model("ccm_hrnet_w32", input_size=SIZE, backbone_weights=tmp_path / "backbone.pt")
    for key, value in model.backbone.state_dict().items():
        expected = torch.zeros_like(value) if key.endswith("num_batches_tracked") else own[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0)


def test_a_backbone_missing_tensors_is_refused(tmp_path, timm_state):
    state = dict(timm_state)
    del state["stage3.1.branches.2.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(
        ValueError, match=r"does not match its model: missing \(1\): stage3.1.branches.2.0.conv1"
    ):
        import_backbone(tmp_path / "partial.pth", "timm")
