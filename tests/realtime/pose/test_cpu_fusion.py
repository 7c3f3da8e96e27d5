"""Convolution + activation pairs fused into oneDNN post-ops: same outputs, checked, or left."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from realtime.pose import cpu_fusion
from realtime.pose.cpu_fusion import FusedConv, fuse_activations

pytestmark = pytest.mark.skipif(not cpu_fusion.available(), reason="needs oneDNN")


class ConvModule(nn.Module):
    """MMPose-style: act(bn(conv(x))), with the batch norm already folded to an identity."""

    def __init__(self, c_in: int, c_out: int, act: nn.Module, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=kw.pop("padding", 1), **kw)
        self.bn = nn.Identity()
        self.activate = act

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class PreActivation(nn.Module):
    """conv(act(x)): the children alone cannot tell it from a ConvModule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.activate = nn.ReLU()

    def forward(self, x):
        return self.conv(self.activate(x) - 0.5)


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        ConvModule(3, 8, nn.ReLU6(inplace=True), stride=2),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Identity(), nn.ReLU()),
        ConvModule(8, 8, nn.ReLU(), padding=2, dilation=2),
        nn.Sequential(nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1), nn.Identity(), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.Sigmoid()),
        nn.Conv2d(4, 4, 1),  # no activation after it: left as it is
    ).eval()


def test_fused_network_computes_what_the_original_does():
    model = network()
    x = torch.randn(3, 3, 32, 24)
    fused = fuse_activations(model, x[:2])
    assert sum(isinstance(m, FusedConv) for m in fused.modules()) == 5
    assert not any(isinstance(m, nn.ReLU | nn.ReLU6 | nn.Sigmoid) for m in fused.modules())
    assert isinstance(fused[5], nn.Conv2d) and fused is not model
    with torch.inference_mode():
        # Another batch size than the weights were packed for gives the same result.
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
        assert isinstance(model[0].activate, nn.ReLU6)  # the caller's model is untouched
        low = x.bfloat16().contiguous(memory_format=torch.channels_last)
        model_bf16 = network().to(torch.bfloat16).to(memory_format=torch.channels_last)
        fused_bf16 = fuse_activations(model_bf16, low)
        reference = model_bf16(low).float()
        error = (fused_bf16(low).float() - reference).abs().max() / reference.abs().max()
        assert error < 1e-2


def test_a_pair_in_another_order_is_caught_and_nothing_is_fused(caplog):
    model = nn.Sequential(PreActivation(), nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())).eval()
    with caplog.at_level(logging.WARNING):
        out = fuse_activations(model, torch.randn(2, 8, 6, 6))
    assert out is model and "running unfused" in caplog.text


def test_nothing_to_fuse_or_no_onednn_returns_the_model(monkeypatch):
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)).eval()
    assert fuse_activations(plain, torch.randn(1, 3, 8, 8)) is plain
    monkeypatch.setattr(cpu_fusion, "available", lambda: False)
    model = network()
    assert fuse_activations(model, torch.randn(1, 3, 32, 24)) is model
