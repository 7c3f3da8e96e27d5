"""Context Mixer (Eq. 1) and the cascaded decoder (Eq. 2-4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccm.context_mixer import HDC_DILATIONS, CascadedDecoder, ContextMixer


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Give every conv O(1) weights and every BN non-trivial statistics and affine terms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in**0.5)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))


def _bn(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _reference_cm(cm: ContextMixer, x: Tensor) -> Tensor:
    """Eq. (1) written out with functional ops from the CM's own weights (eval-mode BN)."""
    res_in = F.interpolate(x, scale_factor=2.0, mode="nearest") if cm.upsample else x
    res = _bn(F.conv2d(res_in, cm.res[0].weight), cm.res[1])

    pooled = x.mean(dim=(2, 3), keepdim=True)
    se = F.relu(_bn(F.conv2d(pooled, cm.se[1].weight), cm.se[2]))
    se = torch.sigmoid(_bn(F.conv2d(se, cm.se[4].weight), cm.se[5]))

    parts = []
    for d, branch in zip((1, 2, 3, 4), cm.hdc, strict=True):
        conv = F.conv2d(x, branch[0].weight, padding=d, dilation=d)
        parts.append(F.relu(_bn(conv, branch[1])))
    cat = torch.cat(parts, dim=1)
    merge = cm.hdc_merge[0]
    if cm.upsample:
        hdc = F.conv_transpose2d(cat, merge.weight, stride=2, padding=1)
    else:
        hdc = F.conv2d(cat, merge.weight, padding=1)
    hdc = F.relu(_bn(hdc, cm.hdc_merge[1]))
    return F.relu(se * hdc + res)


@pytest.mark.parametrize("upsample", [True, False])
def test_cm_output_shape(upsample: bool) -> None:
    cm = ContextMixer(8, 16, upsample).eval()
    out = cm(torch.randn(2, 8, 5, 7))
    assert out.shape == ((2, 16, 10, 14) if upsample else (2, 16, 5, 7))


@pytest.mark.parametrize("upsample", [True, False])
def test_cm_matches_eq1_written_out(upsample: bool) -> None:
    torch.manual_seed(0)
    cm = ContextMixer(12, 8, upsample).eval()
    _randomize(cm)
    x = torch.randn(2, 12, 6, 5)
    with torch.no_grad():
        out, ref = cm(x), _reference_cm(cm, x)
    assert ref.abs().max() > 0.5  # the check is not between two near-zero tensors
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("upsample", [True, False])
def test_cm_output_is_relu_of_gated_hdc_plus_res(upsample: bool) -> None:
    torch.manual_seed(1)
    cm = ContextMixer(8, 12, upsample).eval()
    _randomize(cm, seed=1)
    x = torch.randn(3, 8, 4, 6)
    with torch.no_grad():
        out = cm(x)
        se, hdc, res = cm.forward_branches(x)
    assert se.shape == (3, 12, 1, 1)
    assert 0.0 < float(se.min()) and float(se.max()) < 1.0  # a sigmoid gate
    assert hdc.shape == res.shape == out.shape
    # Both the gate and the residual matter: dropping either changes the output.
    assert (out - F.relu(hdc + res)).abs().max() > 1e-2
    assert (out - F.relu(se * hdc)).abs().max() > 1e-2
    torch.testing.assert_close(out, F.relu(se * hdc + res), atol=1e-6, rtol=0.0)


def test_res_branch_equals_upsample_then_conv_in_training() -> None:
    torch.manual_seed(2)
    cm = ContextMixer(6, 8, upsample=True).train()
    _randomize(cm, seed=2)
    x = torch.randn(2, 6, 5, 4)
    conv, bn = cm.res
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    # Paper order with training-mode BN (batch statistics of the upsampled map).
    ref = F.batch_norm(F.conv2d(up, conv.weight), None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    with torch.no_grad():
        _, _, res = cm.forward_branches(x)
    torch.testing.assert_close(res, ref, atol=1e-5, rtol=1e-5)


def test_hdc_dilations_are_1_2_3_4() -> None:
    cm = ContextMixer(1, 4, upsample=False).eval()
    assert HDC_DILATIONS == (1, 2, 3, 4)
    assert [b[0].dilation for b in cm.hdc] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert [b[0].padding for b in cm.hdc] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    # Impulse response: a dilated 3x3 kernel of ones touches centre +- d in each axis.
    x = torch.zeros(1, 1, 11, 11)
    x[0, 0, 5, 5] = 1.0
    with torch.no_grad():
        for d, branch in zip((1, 2, 3, 4), cm.hdc, strict=True):
            branch[0].weight.fill_(1.0)
            support = branch[0](x)[0, 0].nonzero().tolist()
            expected = sorted([5 + dy, 5 + dx] for dy in (-d, 0, d) for dx in (-d, 0, d))
            assert sorted(support) == expected


def test_cm_width_must_split_in_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        ContextMixer(8, 10, upsample=True)


def test_cm_train_mode_needs_batch_of_two() -> None:
    cm = ContextMixer(4, 8, upsample=True).train()
    out = cm(torch.randn(2, 4, 3, 3))
    assert out.shape == (2, 8, 6, 6) and torch.isfinite(out).all()
    # Documented: BN on the SE branch's 1x1 map has no batch statistics for one sample.
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cm(torch.randn(1, 4, 3, 3))
    cm.eval()
    assert cm(torch.randn(1, 4, 3, 3)).shape == (1, 8, 6, 6)


def test_cascaded_decoder_shapes_and_names() -> None:
    dec = CascadedDecoder(32, (16, 12, 8), (True, True, False), num_keypoints=5).eval()
    out = dec(torch.randn(1, 32, 4, 3))
    assert out.shape == (1, 5, 16, 12)
    assert dec.upscale == 4
    assert [m.upsample for m in dec.mixers] == [True, True, False]
    assert [(m.in_channels, m.channels) for m in dec.mixers] == [(32, 16), (16, 12), (12, 8)]
    names = set(dict(dec.named_parameters()))
    assert {"mixers.0.res.0.weight", "mixers.2.hdc.3.0.weight", "final_layer.weight"} <= names


def test_cascaded_decoder_rejects_mismatched_flags() -> None:
    with pytest.raises(ValueError, match="one upsample flag per CM"):
        CascadedDecoder(32, (16, 16), (True,), num_keypoints=17)
