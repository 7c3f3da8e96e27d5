"""build_model: shapes, gradients, parameter counts vs Table 7, compile parity, weight loading."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ccm.backbones.mobile import MobileNetV2, ShuffleNetV2
from ccm.backbones.resnet import ResNet
from ccm.model import (
    ARCHS,
    PoseModel,
    build_model,
    count_gmacs,
    count_params,
    load_backbone_weights,
)

SMALL = (96, 64)  # crop (H, W): heatmaps 24x16, non-square to catch H/W swaps

# Exact counts of this implementation (a change to any architecture shows up here).
EXPECTED_PARAMS = {
    "ccm_resnet50": 39_749_986,
    "ccm_resnet152": 63_495_682,
    "ccm_hrnet_w32": 28_577_154,
    "ccm_hrnet_w48": 63_687_250,
    "ccm_mobilenetv2": 10_024_802,
    "ccm_shufflenetv2": 9_864_230,
    "simplebaseline_resnet50": 33_999_697,
    "simplebaseline_resnet152": 68_635_473,
    "simplebaseline_mobilenetv2": 9_569_809,
    "simplebaseline_shufflenetv2": 7_550_965,
    "hrnet_w32": 28_536_113,
    "hrnet_w48": 63_595_745,
}
# Table 7 lists 8.78M, but torchvision's ShuffleNetV2 1.0x without fc (1.254M) plus the
# SimpleBaseline head (6.297M) is 7.55M; see docs/models.md.
TABLE7_EXCEPTIONS = {"simplebaseline_shufflenetv2"}


@pytest.fixture(scope="module", params=list(ARCHS))
def arch_model(request: pytest.FixtureRequest) -> tuple[str, PoseModel]:
    """One model per arch, shared by the tests that take it (pytest groups them by arch)."""
    torch.manual_seed(0)
    return request.param, build_model(request.param, input_size=SMALL)


def _meta_model(arch: str) -> PoseModel:
    with torch.device("meta"):
        return build_model(arch)


def test_arch_table_is_complete() -> None:
    stable = {
        "ccm_resnet50", "ccm_resnet152", "ccm_hrnet_w32", "ccm_hrnet_w48", "ccm_mobilenetv2",
        "ccm_shufflenetv2", "simplebaseline_resnet50", "simplebaseline_resnet152",
        "hrnet_w32", "hrnet_w48",
    }  # fmt: skip
    assert stable <= set(ARCHS)
    assert set(EXPECTED_PARAMS) == set(ARCHS)


def test_eval_forward_shapes(arch_model: tuple[str, PoseModel]) -> None:
    _, model = arch_model
    model.eval()
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        pen, last = model.forward_features(x)
        heatmaps = model(x)
    bb = model.backbone
    for feat, c, s in zip((pen, last), bb.out_channels, bb.out_strides, strict=True):
        assert feat.shape == (1, c, SMALL[0] // s, SMALL[1] // s)
    assert heatmaps.shape == (1, 17, 24, 16)
    assert torch.isfinite(heatmaps).all()
    assert heatmaps.abs().max() > 0  # not a dead network
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head((pen, last)), heatmaps)


def test_train_forward_and_every_parameter_gets_a_gradient(
    arch_model: tuple[str, PoseModel],
) -> None:
    arch, model = arch_model
    model.train()
    model.zero_grad(set_to_none=True)
    main, aux = model(torch.randn(2, 3, *SMALL))
    assert main.shape == (2, 17, 24, 16)
    if arch.startswith("ccm_"):
        assert aux is not None and aux.shape == main.shape
        loss = main.square().mean() + 0.5 * aux.square().mean()  # Eq. (6) on zero targets
    else:
        assert aux is None
        loss = main.square().mean()
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    zero_grad = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert no_grad == [] and zero_grad == []
    model.zero_grad(set_to_none=True)
    model.eval()


def test_dilated_resnet50_keeps_stride_16() -> None:
    model = _meta_model("ccm_resnet50")
    assert model.backbone.out_strides == (16, 16)
    # torchvision keeps the first block of a dilated stage at dilation 1, with stride 1
    assert model.backbone.layer4[0].conv2.stride == (1, 1)
    assert model.backbone.layer4[1].conv2.dilation == (2, 2)
    assert [m.upsample for m in model.head.mixers] == [True, True, False]
    assert [m.upsample for m in model.aux_head.mixers] == [True, True, False]
    assert [m.channels for m in model.head.mixers] == [256, 256, 256]


def test_resnet152_aux_decoder_upsamples_from_layer3() -> None:
    model = _meta_model("ccm_resnet152")
    assert model.backbone.out_strides == (16, 32)
    assert [m.upsample for m in model.head.mixers] == [True, True, True]
    assert [m.upsample for m in model.aux_head.mixers] == [True, True, False]
    assert [m.channels for m in model.head.mixers] == [128, 96, 64]


def test_hrnet_ccm_is_one_mixer_at_stride_4() -> None:
    for arch, width in (("ccm_hrnet_w32", 32), ("ccm_hrnet_w48", 48)):
        model = _meta_model(arch)
        for head in (model.head, model.aux_head):
            assert [(m.channels, m.upsample) for m in head.mixers] == [(width, False)]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_param_counts_match_table7(arch: str) -> None:
    spec = ARCHS[arch]
    n = count_params(_meta_model(arch))
    assert n == EXPECTED_PARAMS[arch]
    if arch in TABLE7_EXCEPTIONS:
        assert abs(n / 1e6 - spec.paper_params_m) / spec.paper_params_m > 0.03
    else:
        assert abs(n / 1e6 - spec.paper_params_m) / spec.paper_params_m < 0.03


def test_count_gmacs_counts_multiply_adds() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 4, 2, 1))
    # conv: 32*32 px * 8 out * 3*9 in; deconv: 32*32 input px * 8 in * 4 out * 16 taps
    expected = (32 * 32 * 8 * 27 + 32 * 32 * 8 * 4 * 16) / 1e9
    assert count_gmacs(conv, (32, 32)) == pytest.approx(expected, rel=1e-12)
    hrnet = _meta_model("hrnet_w32")
    assert hrnet.training  # a fresh module; count_gmacs must leave its mode alone
    assert count_gmacs(hrnet, (256, 192)) == pytest.approx(7.68, rel=0.01)  # Table 7
    assert hrnet.training


def test_count_gmacs_training_adds_aux_and_keeps_bn_statistics() -> None:
    model = build_model("ccm_mobilenetv2", input_size=(64, 64)).eval()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    eval_g = count_gmacs(model, (64, 64))
    train_g = count_gmacs(model, (64, 64), training=True)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.aux_head(torch.zeros(1, 320, 2, 2))  # layer7 of a 64x64 crop
    aux_g = counter.get_total_flops() / 2e9
    assert aux_g > 0.01 * eval_g
    assert train_g == pytest.approx(eval_g + aux_g, rel=1e-9)
    assert not model.training
    for k, v in model.state_dict().items():
        if k in stats:
            assert torch.equal(v, stats[k]), k


@pytest.mark.slow  # inductor codegen: ~35 s cold on 2 CPU cores, a few seconds when cached
def test_compile_matches_eager() -> None:
    torch.manual_seed(0)
    model = build_model("ccm_mobilenetv2", input_size=(64, 64)).eval()
    with torch.no_grad():  # O(1) activations, so the tolerance means something
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    assert eager.abs().max() > 1.0
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown arch 'resnet9'.*ccm_resnet50.*hrnet_w48"):
        build_model("resnet9")


@pytest.mark.parametrize("size", [(250, 192), (256, 190), (0, 192), (256,), (256.5, 192)])
def test_bad_input_size_is_rejected(size: tuple) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model("ccm_mobilenetv2", input_size=size)


def test_bad_forward_input_is_rejected() -> None:
    model = build_model("simplebaseline_mobilenetv2", input_size=SMALL).eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(1, 1, 96, 64))


def test_num_keypoints_sets_heatmap_channels() -> None:
    model = build_model("ccm_shufflenetv2", num_keypoints=14, input_size=(64, 64)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 14, 16, 16)
    assert model.num_keypoints == 14 and model.aux_head.final_layer.out_channels == 14
    with pytest.raises(ValueError, match="num_keypoints"):
        build_model("hrnet_w32", num_keypoints=0)


def test_head_init_follows_simplebaseline() -> None:
    torch.manual_seed(0)
    model = build_model("simplebaseline_resnet50")
    deconv = model.head.deconv_layers[0].weight  # 2048*256*16 samples
    assert deconv.mean().abs() < 1e-5
    assert deconv.std().item() == pytest.approx(0.001, rel=0.01)
    assert torch.equal(model.head.deconv_layers[1].weight, torch.ones(256))
    assert torch.equal(model.head.deconv_layers[1].bias, torch.zeros(256))
    assert torch.equal(model.head.final_layer.bias, torch.zeros(17))


def test_key_names_match_torchvision_and_mmpose() -> None:
    r50 = set(ResNet(50).state_dict())
    tv = {k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.")}
    assert r50 == tv
    sb = set(_meta_model("simplebaseline_resnet50").state_dict())
    assert {f"head.deconv_layers.{i}.weight" for i in (0, 1, 3, 4, 6, 7)} <= sb
    assert {
        "head.final_layer.weight",
        "head.final_layer.bias",
        "backbone.layer4.2.bn3.weight",
    } <= sb
    assert {"head.final_layer.weight", "head.final_layer.bias"} <= set(
        _meta_model("hrnet_w32").state_dict()
    )
    mb = _meta_model("simplebaseline_mobilenetv2").state_dict()
    # MMPose MobileNetV2 layout (td-hm_mobilenetv2_8xb64-210e_coco-256x192)
    assert mb["backbone.conv1.conv.weight"].shape == (32, 3, 3, 3)
    assert mb["backbone.layer1.0.conv.1.conv.weight"].shape == (16, 32, 1, 1)
    assert mb["backbone.layer7.0.conv.2.bn.running_var"].shape == (320,)
    assert mb["backbone.conv2.conv.weight"].shape == (1280, 320, 1, 1)
    ccm = set(_meta_model("ccm_mobilenetv2").state_dict())
    assert {"head.mixers.2.hdc_merge.0.weight", "aux_head.final_layer.weight"} <= ccm


def test_backbone_init_from_torchvision_pth(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.shufflenet_v2_x1_0()
    path = tmp_path / "shufflenet.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # with fc.*, dropped on load
    torch.manual_seed(2)
    model = build_model("ccm_shufflenetv2", input_size=(64, 64))
    before = model.backbone.conv1[0].weight.clone()
    model = build_model("ccm_shufflenetv2", input_size=(64, 64), backbone_weights=path)
    after = model.backbone.conv1[0].weight
    assert not torch.equal(before, after)
    assert torch.equal(after, source.conv1[0].weight)
    report = load_backbone_weights(ShuffleNetV2(), path)
    assert report.missing == () and report.unexpected == ()


def test_torchvision_mobilenetv2_safetensors_is_renamed(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = torchvision.models.mobilenet_v2().eval()
    with torch.no_grad():  # non-trivial BN statistics so the features test the renaming
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "mobilenet_v2.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = MobileNetV2().eval()
    report = load_backbone_weights(backbone, path)
    assert report.missing == () and report.unexpected == ()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[1], source.features(x), atol=1e-5, rtol=1e-5)


def test_backbone_init_reports_missing_keys(tmp_path: Path, caplog) -> None:
    state = {k: v for k, v in ResNet(50).state_dict().items() if not k.startswith("layer4.")}
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    report = load_backbone_weights(ResNet(50), path)
    # torch refills BN's num_batches_tracked silently, so it never shows as missing
    layer4 = [
        k for k in ResNet(50).state_dict()
        if k.startswith("layer4.") and not k.endswith("num_batches_tracked")
    ]  # fmt: skip
    assert report.missing == tuple(layer4)
    assert report.unexpected == ("extra.weight",)
    with caplog.at_level(logging.WARNING, logger="ccm.model"):
        build_model("simplebaseline_resnet50", backbone_weights=path)
    assert "not in" in caplog.text and "layer4.0.conv1.weight" in caplog.text
    assert "unused: extra.weight" in caplog.text


def test_backbone_init_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("hrnet_w32", backbone_weights=tmp_path / "nope.pth")
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match=r"conv1.weight: file \(64, 3, 3, 3\)"):
        load_backbone_weights(ResNet(50), path)
