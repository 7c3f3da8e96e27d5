"""Small encoders: MobileNetV2 (MMPose key layout) and ShuffleNetV2 1.0x (torchvision layout).

MobileNetV2 keeps MMPose's parameter names (``conv1.conv/bn``, ``layer1..layer7`` of inverted
residual blocks with ``conv.{i}.conv/bn``, ``conv2``) so the public MMPose checkpoint
``td-hm_mobilenetv2_8xb64-210e_coco-256x192`` loads under ``backbone.*`` without renaming;
:meth:`MobileNetV2.adapt_state_dict` renames a torchvision ImageNet file (``features.*``) into
that layout. ShuffleNetV2 keeps torchvision's names, so torchvision ImageNet files load as is.
"""

from __future__ import annotations

import re

from torch import Tensor, nn
from torchvision.models import shufflenetv2

# expand ratio t, output channels c, blocks n, stride of the first block s (MobileNetV2 Table 2)
_MBV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BN -> optional ReLU6; keys ``conv``/``bn`` as MMPose's ConvModule."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(c_out)
        self.activate = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: (1x1 expand) -> 3x3 depthwise -> 1x1 linear projection, + identity."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = c_in * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(c_in, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden),
            ConvBNAct(hidden, c_out, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0, returning ``(layer7, conv2)``.

    The penultimate feature is ``layer7`` (N, 320, H/32, W/32), the last inverted-residual
    stage; the last feature is ``conv2`` (N, 1280, H/32, W/32). Both are at stride 32, so an
    auxiliary decoder on ``layer7`` has the same structure as the main one.
    Input (N, 3, H, W) ImageNet-normalised RGB.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(3, 32, 3, stride=2)
        c_in = 32
        for i, (t, c, n, s) in enumerate(_MBV2_SETTINGS, start=1):
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(c_in, c, s if j == 0 else 1, t))
                c_in = c
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.conv2 = ConvBNAct(c_in, 1280, 1)
        self.out_channels: tuple[int, int] = (c_in, 1280)
        self.out_strides: tuple[int, int] = (32, 32)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        for i in range(1, len(_MBV2_SETTINGS) + 1):
            x = getattr(self, f"layer{i}")(x)
        return x, self.conv2(x)

    @staticmethod
    def adapt_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename torchvision ``mobilenet_v2`` keys (``features.*``) to this layout.

        Keys already in this layout pass through; torchvision's ``classifier.*`` is dropped.
        """
        if not any(k.startswith("features.") for k in state):
            return dict(state)
        # features.{f} -> layer{L}.{j}: f = 1 + running block index over _MBV2_SETTINGS
        block_of: dict[int, tuple[int, int, int]] = {}
        f = 1
        for layer, (t, _, n, _) in enumerate(_MBV2_SETTINGS, start=1):
            for j in range(n):
                block_of[f] = (layer, j, t)
                f += 1
        last = f  # features.{last} is the 1x1 conv to 1280 channels
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
            if m is None:
                if not key.startswith("classifier."):
                    out[key] = value
                continue
            f, rest = int(m.group(1)), m.group(2)
            if f == 0 or f == last:
                name = "conv1" if f == 0 else "conv2"
                out[f"{name}.{_cna(rest)}"] = value
                continue
            layer, j, t = block_of[f]
            out[f"layer{layer}.{j}.{_block_key(rest, t)}"] = value
        return out


def _cna(rest: str) -> str:
    """torchvision Conv2dNormActivation ``0.*``/``1.*`` -> ``conv.*``/``bn.*``."""
    idx, _, param = rest.partition(".")
    return f"{('conv', 'bn')[int(idx)]}.{param}"


def _block_key(rest: str, expand_ratio: int) -> str:
    """torchvision InvertedResidual ``conv.*`` key -> MMPose ``conv.{i}.conv/bn.*`` key."""
    m = re.fullmatch(r"conv\.(\d+)\.(.+)", rest)
    if m is None:
        raise ValueError(f"unexpected torchvision MobileNetV2 block key {rest!r}")
    idx, tail = int(m.group(1)), m.group(2)
    n_cna = 2 if expand_ratio != 1 else 1  # Conv2dNormActivation modules before the projection
    if idx < n_cna:
        return f"conv.{idx}.{_cna(tail)}"
    # the linear projection is a bare Conv2d then a bare BatchNorm2d in torchvision
    return f"conv.{n_cna}.{('conv', 'bn')[idx - n_cna]}.{tail}"


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 1.0x (torchvision layout, no ``fc``) returning ``(stage4, conv5)``.

    The penultimate feature is ``stage4`` (N, 464, H/32, W/32); the last is ``conv5``
    (N, 1024, H/32, W/32). Input (N, 3, H, W) ImageNet-normalised RGB.
    """

    def __init__(self) -> None:
        super().__init__()
        net = shufflenetv2.shufflenet_v2_x1_0(weights=None)
        self.conv1 = net.conv1
        self.maxpool = net.maxpool
        self.stage2 = net.stage2
        self.stage3 = net.stage3
        self.stage4 = net.stage4
        self.conv5 = net.conv5
        self.out_channels: tuple[int, int] = (464, 1024)
        self.out_strides: tuple[int, int] = (32, 32)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return x, self.conv5(x)
