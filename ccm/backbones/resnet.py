"""ResNet encoders built from torchvision's blocks, with torchvision's parameter names.

The module holds ``conv1, bn1, layer1..layer4`` directly (no ``fc``, no pooling), so a
torchvision ImageNet state dict (minus ``fc.*``) and MMPose's ``backbone.*`` keys load
unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet

_DEPTHS = {
    18: resnet.resnet18,
    34: resnet.resnet34,
    50: resnet.resnet50,
    101: resnet.resnet101,
    152: resnet.resnet152,
}


class ResNet(nn.Module):
    """ResNet-``depth`` returning ``(layer3, layer4)`` features.

    Args:
        depth: 18, 34, 50, 101 or 152.
        dilate_last: run ``layer4`` at stride 16 with dilation 2 instead of stride 32 (the
            paper's "D", Table 2), torchvision's ``replace_stride_with_dilation=[F, F, T]``.

    Input (N, 3, H, W) ImageNet-normalised RGB; output ``(layer3, layer4)`` of shapes
    (N, 4*256, H/16, W/16) and (N, 4*512, H/s, W/s) with s = 16 if dilated else 32 (channel
    factor 4 for the bottleneck depths 50/101/152, 1 for 18/34).
    """

    def __init__(self, depth: int = 50, dilate_last: bool = False) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if dilate_last and depth < 50:
            raise ValueError("a dilated last stage needs a bottleneck ResNet (depth >= 50)")
        net = _DEPTHS[depth](weights=None, replace_stride_with_dilation=[False, False, dilate_last])
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels: tuple[int, int] = (256 * expansion, 512 * expansion)
        self.out_strides: tuple[int, int] = (16, 16 if dilate_last else 32)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        c4 = self.layer3(x)
        return c4, self.layer4(c4)
