"""Baseline heatmap heads and the shared head initialisation.

Module names follow MMPose's ``HeatmapHead`` (``deconv_layers``, ``final_layer``) so that the
public SimpleBaseline and HRNet checkpoints load under ``head.*`` without renaming.
"""

from __future__ import annotations

from torch import Tensor, nn


class DeconvHead(nn.Module):
    """SimpleBaseline head (Xiao et al., 2018): 3 x (4x4 stride-2 deconv, BN, ReLU), 1x1 conv.

    Shapes: (N, in_channels, h, w) -> heatmaps (N, num_keypoints, 8h, 8w).
    Keys: ``deconv_layers.{0,3,6}`` transposed convs (no bias), ``deconv_layers.{1,4,7}`` BN,
    ``final_layer`` the 1x1 prediction conv.
    """

    def __init__(
        self,
        in_channels: int,
        num_keypoints: int,
        channels: tuple[int, ...] = (256, 256, 256),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(c_in, num_keypoints, 1)
        self.upscale = 2 ** len(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.final_layer(self.deconv_layers(x))


class ConvHead(nn.Module):
    """HRNet head (Sun et al., 2019): a single 1x1 conv on the stride-4 branch.

    Shapes: (N, in_channels, h, w) -> heatmaps (N, num_keypoints, h, w).
    """

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, 1)
        self.upscale = 1

    def forward(self, x: Tensor) -> Tensor:
        return self.final_layer(x)


def init_head_weights(module: nn.Module) -> None:
    """SimpleBaseline / HRNet head init: conv/deconv weights N(0, 0.001), biases 0, BN (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
