"""HRNet backbone: shapes, parameter counts, checkpoint key layout, gradients."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from ccm.backbones.hrnet import HRNet

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv(prefix: str) -> list[str]:
    return [f"{prefix}.weight"]


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{s}" for s in _BN_SUFFIXES]


def _conv_bn(prefix: str) -> list[str]:
    return _conv(f"{prefix}.0") + _bn(f"{prefix}.1")


def _expected_keys() -> list[str]:
    """State-dict keys of the official pose_hrnet backbone, from its layout rules.

    The same for every width: widths change tensor shapes, not names.
    """
    keys = _conv("conv1") + _bn("bn1") + _conv("conv2") + _bn("bn2")
    for k in range(4):
        p = f"layer1.{k}"
        for n in (1, 2, 3):
            keys += _conv(f"{p}.conv{n}") + _bn(f"{p}.bn{n}")
        if k == 0:
            keys += _conv_bn(f"{p}.downsample")
    for stage, num_modules in ((2, 1), (3, 4), (4, 3)):
        num_branches = stage
        # transition1.0 widens 256 -> width (conv, BN, ReLU); every transition adds one new
        # branch as Sequential(Sequential(conv s2, BN, ReLU)); unchanged branches have no keys.
        t = f"transition{stage - 1}"
        if stage == 2:
            keys += _conv_bn(f"{t}.0")
        keys += _conv_bn(f"{t}.{num_branches - 1}.0")
        for m in range(num_modules):
            p = f"stage{stage}.{m}"
            for b in range(num_branches):
                for k in range(4):
                    q = f"{p}.branches.{b}.{k}"
                    keys += _conv(f"{q}.conv1") + _bn(f"{q}.bn1")
                    keys += _conv(f"{q}.conv2") + _bn(f"{q}.bn2")
            last_of_net = stage == 4 and m == num_modules - 1
            for i in range(1 if last_of_net else num_branches):
                for j in range(num_branches):
                    if j > i:
                        keys += _conv_bn(f"{p}.fuse_layers.{i}.{j}")
                    elif j < i:
                        for k in range(i - j):
                            keys += _conv_bn(f"{p}.fuse_layers.{i}.{j}.{k}")
    return keys


@pytest.fixture(scope="module")
def hrnet_w32() -> HRNet:
    torch.manual_seed(0)
    return HRNet(32)


@pytest.fixture(scope="module")
def hrnet_w48() -> HRNet:
    torch.manual_seed(0)
    return HRNet(48)


def test_w32_output_shapes(hrnet_w32: HRNet) -> None:
    hrnet_w32.eval()
    with torch.no_grad():
        penultimate, last = hrnet_w32(torch.randn(2, 3, 128, 96))
    assert hrnet_w32.out_channels == (32, 32)
    assert hrnet_w32.out_strides == (4, 4)
    assert penultimate.shape == (2, 32, 32, 24)
    assert last.shape == (2, 32, 32, 24)
    assert torch.isfinite(penultimate).all() and torch.isfinite(last).all()
    # Both outputs end in the fuse ReLU.
    assert penultimate.min() >= 0 and last.min() >= 0


def test_w48_output_shapes(hrnet_w48: HRNet) -> None:
    hrnet_w48.eval()
    with torch.no_grad():
        penultimate, last = hrnet_w48(torch.randn(1, 3, 64, 64))
    assert hrnet_w48.out_channels == (48, 48)
    assert hrnet_w48.out_strides == (4, 4)
    assert penultimate.shape == (1, 48, 16, 16)
    assert last.shape == (1, 48, 16, 16)
    assert torch.isfinite(last).all()


def test_penultimate_is_stage3_high_resolution_branch(hrnet_w32: HRNet) -> None:
    captured: list[torch.Tensor] = []
    handle = hrnet_w32.stage3.register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
    hrnet_w32.eval()
    try:
        with torch.no_grad():
            penultimate, last = hrnet_w32(torch.randn(1, 3, 64, 64))
    finally:
        handle.remove()
    assert len(captured) == 1
    assert torch.equal(penultimate, captured[0])
    assert not torch.allclose(penultimate, last)


def test_parameter_counts_match_official_pose_hrnet(hrnet_w32: HRNet, hrnet_w48: HRNet) -> None:
    # Official pose_hrnet (leoxiaobin/deep-high-resolution-net.pytorch, lib/models/pose_hrnet.py)
    # with its final_layer, a biased 1x1 conv to 17 joints: 28,536,113 and 63,595,745
    # parameters, published rounded as 28.5M / 63.6M (its README; CCM paper Table 7).
    def with_head(backbone: HRNet) -> int:
        head = nn.Conv2d(backbone.out_channels[1], 17, kernel_size=1)
        return sum(p.numel() for p in (*backbone.parameters(), *head.parameters()))

    assert with_head(hrnet_w32) == 28_536_113
    assert with_head(hrnet_w48) == 63_595_745
    assert round(with_head(hrnet_w32) / 1e6, 1) == 28.5
    assert round(with_head(hrnet_w48) / 1e6, 1) == 63.6


def test_state_dict_keys_match_official_layout(hrnet_w32: HRNet, hrnet_w48: HRNet) -> None:
    expected = _expected_keys()
    assert len(expected) == len(set(expected))
    assert list(hrnet_w32.state_dict()) == expected
    assert list(hrnet_w48.state_dict()) == expected
    counts = Counter(k.split(".")[0] for k in expected)
    assert counts == {
        "conv1": 1, "bn1": 5, "conv2": 1, "bn2": 5, "layer1": 78,
        "transition1": 12, "transition2": 6, "transition3": 6,
        "stage2": 108, "stage3": 744, "stage4": 786,
    }  # fmt: skip


def test_deep_keys_and_shapes(hrnet_w32: HRNet) -> None:
    sd = hrnet_w32.state_dict()
    shapes = {
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "transition1.0.0.weight": (32, 256, 3, 3),
        "transition1.1.0.0.weight": (64, 256, 3, 3),
        "transition2.2.0.0.weight": (128, 64, 3, 3),
        "transition3.3.0.0.weight": (256, 128, 3, 3),
        "stage2.0.fuse_layers.0.1.0.weight": (32, 64, 1, 1),
        "stage2.0.fuse_layers.1.0.0.0.weight": (64, 32, 3, 3),
        "stage3.3.branches.2.3.conv2.weight": (128, 128, 3, 3),
        # Branch 0 -> 3: two width-keeping stride-2 convs, then one to branch 3's width.
        "stage4.1.fuse_layers.3.0.0.0.weight": (32, 32, 3, 3),
        "stage4.1.fuse_layers.3.0.2.0.weight": (256, 32, 3, 3),
        "stage4.1.fuse_layers.3.0.2.1.running_var": (256,),
        "stage4.2.fuse_layers.0.3.0.weight": (32, 256, 1, 1),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # Pass-through transitions and the fusions the last module skips have no parameters.
    for absent in ("transition2.0", "transition2.1", "transition3.2", "stage4.2.fuse_layers.1"):
        assert not any(k.startswith(absent + ".") for k in sd), absent


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = HRNet(32).train()
    penultimate, last = model(torch.randn(2, 3, 64, 64))
    weights = torch.randn(2, 32, 16, 16)
    (last * weights).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []
    assert penultimate.grad_fn is not None


def test_load_state_dict_round_trip(hrnet_w32: HRNet) -> None:
    torch.manual_seed(1)
    other = HRNet(32)
    result = other.load_state_dict(hrnet_w32.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = torch.randn(1, 3, 64, 32)
    hrnet_w32.eval()
    other.eval()
    with torch.no_grad():
        for a, b in zip(hrnet_w32(x), other(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("width", [0, 18, 64])
def test_rejects_unknown_width(width: int) -> None:
    with pytest.raises(ValueError, match="width"):
        HRNet(width)


@pytest.mark.parametrize("shape", [(1, 3, 64, 48), (1, 1, 64, 64), (3, 64, 64)])
def test_rejects_bad_input_shape(hrnet_w32: HRNet, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="HRNet"):
        hrnet_w32(torch.zeros(shape))
