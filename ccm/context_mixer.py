"""Context Mixer (CM) and the cascaded CM decoder (paper Sec. 3.2, Eq. 1-4).

A CM has three parallel branches on the same input feature map ``x`` (N, C_in, h, w):

- RES: (2x nearest upsampling) -> 1x1 conv -> BN, keeps the previous stage's features
  (computed as conv -> BN -> upsampling, which is identical for nearest upsampling);
- SE: global average pool -> 1x1 conv to C/4 -> BN -> ReLU -> 1x1 conv to C -> BN -> sigmoid,
  a channel gate in [0, 1] of shape (N, C, 1, 1);
- HDC: four 3x3 convs with dilation 1, 2, 3, 4 and C/4 kernels each (BN, ReLU), concatenated
  to C channels, then a 4x4 stride-2 transposed conv (when upsampling) or a 3x3 stride-1 conv,
  BN, ReLU;

and mixes them as ``ReLU(SE * HDC + RES)`` (Eq. 1). All tensors live in feature-map space of
the backbone; a CM that upsamples doubles the spatial size.

BatchNorm in the SE branch normalises a 1x1 map, so in training mode its batch statistics come
from the N samples alone: batch size 1 raises PyTorch's "Expected more than 1 value per
channel" error and small batches give noisy statistics. The paper puts BN after every conv, so
it is kept; train with batch >= 2 (any real top-down batch is far larger). Eval mode uses the
running statistics and works for any batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HDC_DILATIONS: tuple[int, ...] = (1, 2, 3, 4)


def _conv_bn(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) followed by BN."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
    )


class ContextMixer(nn.Module):
    """One Context Mixer (Sec. 3.2.1).

    Args:
        in_channels: C_in of the input feature map.
        channels: C, the output width; must be divisible by 4 (SE bottleneck and HDC split).
        upsample: double the spatial size (RES: nearest 2x before the 1x1 conv; HDC: 4x4
            stride-2 transposed conv) or keep it (HDC: 3x3 stride-1 conv).

    Shapes: (N, C_in, h, w) -> (N, C, 2h, 2w) when ``upsample`` else (N, C, h, w).
    """

    def __init__(self, in_channels: int, channels: int, upsample: bool) -> None:
        super().__init__()
        if channels % 4 != 0:
            raise ValueError(f"ContextMixer width must be divisible by 4, got {channels}")
        self.in_channels = in_channels
        self.channels = channels
        self.upsample = upsample
        quarter = channels // 4

        self.res = _conv_bn(in_channels, channels)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, quarter, 1, bias=False),
            nn.BatchNorm2d(quarter),
            nn.ReLU(inplace=True),
            nn.Conv2d(quarter, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )
        self.hdc = nn.ModuleList(
            nn.Sequential(*_conv_bn(in_channels, quarter, 3, d), nn.ReLU(inplace=True))
            for d in HDC_DILATIONS
        )
        if upsample:
            merge: nn.Module = nn.ConvTranspose2d(
                channels, channels, 4, stride=2, padding=1, bias=False
            )
        else:
            merge = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.hdc_merge = nn.Sequential(merge, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward_branches(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three branch outputs ``(se, hdc, res)``: (N, C, 1, 1), (N, C, H', W') twice."""
        res = self.res(x)
        if self.upsample:
            # The paper upsamples before the 1x1 conv; with nearest upsampling the conv and BN
            # (batch statistics included) commute with it exactly, so this order gives the
            # same output for a quarter of the compute.
            res = F.interpolate(res, scale_factor=2.0, mode="nearest")
        se = self.se(x)
        hdc = self.hdc_merge(torch.cat([branch(x) for branch in self.hdc], dim=1))
        return se, hdc, res

    def forward(self, x: Tensor) -> Tensor:
        se, hdc, res = self.forward_branches(x)
        # Eq. (1), plus the ReLU on each CM's output; one pass for the product and sum.
        return torch.addcmul(res, se, hdc).relu_()


class CascadedDecoder(nn.Module):
    """K Context Mixers in sequence (Eq. 2-3) and a 1x1 prediction layer (Eq. 4).

    Args:
        in_channels: channels of the encoder feature fed to the first CM.
        widths: C_k of each CM, k = 1..K.
        upsample: per CM, whether it doubles the spatial size; same length as ``widths``.
        num_keypoints: heatmap channels K of the prediction layer.

    Shapes: (N, in_channels, h, w) -> heatmaps (N, num_keypoints, h * 2**u, w * 2**u) with u
    the number of upsampling CMs. Module names ``mixers.{k}`` and ``final_layer`` (MMPose's
    name for the prediction layer).
    """

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...],
        upsample: tuple[bool, ...],
        num_keypoints: int,
    ) -> None:
        super().__init__()
        if not widths or len(widths) != len(upsample):
            raise ValueError(
                f"need one upsample flag per CM width, got widths={widths} upsample={upsample}"
            )
        mixers = []
        c_in = in_channels
        for width, up in zip(widths, upsample, strict=True):
            mixers.append(ContextMixer(c_in, width, up))
            c_in = width
        self.mixers = nn.Sequential(*mixers)
        self.final_layer = nn.Conv2d(c_in, num_keypoints, 1)
        self.upscale = 2 ** sum(upsample)

    def forward(self, x: Tensor) -> Tensor:
        return self.final_layer(self.mixers(x))  # Eq. (3), then Eq. (4)
