"""HRNet-W32 / HRNet-W48 backbone for top-down pose (Sun et al., CVPR 2019).

The module tree reproduces the official pose network (``pose_hrnet``) so that its
checkpoints, and MMPose's with the ``backbone.`` prefix removed, load with no missing or
unexpected keys:

- stem ``conv1, bn1, conv2, bn2`` (two 3x3 stride-2 convolutions, stride 4 in all) and
  ``layer1`` (four Bottlenecks, 64 planes, 256 channels out);
- ``transition1..3``: a branch whose width changes gets ``Sequential(conv3x3, BN, ReLU)``,
  a new lower-resolution branch gets ``Sequential(Sequential(conv3x3 s2, BN, ReLU))``, and a
  branch that passes through unchanged has no parameters (``None`` in the official code,
  ``nn.Identity`` here: neither has keys);
- ``stage2..4``: 1 / 4 / 3 ``HighResolutionModule``s of 2 / 3 / 4 branches, four BasicBlocks
  per branch, with ``branches.{b}.{block}.*`` and ``fuse_layers.{i}.{j}.*``. The last module
  of stage 4 fuses into the highest-resolution branch only (``fuse_layers.0``).

Every feature map is in crop space divided by the branch's stride: branch ``b`` has stride
``4 * 2**b`` and ``width * 2**b`` channels.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

# Widths of the two published pose variants (channels of the highest-resolution branch).
_WIDTHS = (32, 48)
_STEM_CHANNELS = 64
_LAYER1_BLOCKS = 4
_BLOCKS_PER_BRANCH = 4
# HighResolutionModules in stages 2, 3, 4.
_MODULES_PER_STAGE = (1, 4, 3)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int) -> list[nn.Module]:
    """Bias-free conv (padding keeps the size at stride 1) followed by BatchNorm."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_ch)]


def _upsample_fuse(in_ch: int, out_ch: int, factor: int) -> nn.Sequential:
    """Lower-resolution branch -> higher one: 1x1 conv, BN, nearest upsampling by ``factor``."""
    return nn.Sequential(*_conv_bn(in_ch, out_ch, 1, 1), nn.Upsample(scale_factor=factor))


def _downsample_fuse(in_ch: int, out_ch: int, steps: int) -> nn.Sequential:
    """Higher-resolution branch -> lower one: ``steps`` stride-2 3x3 convs.

    Intermediate steps keep ``in_ch`` channels and end in ReLU; the last maps to ``out_ch``
    and has no ReLU, because the fused sum is rectified once after adding all branches.
    """
    chain = [nn.Sequential(*_conv_bn(in_ch, in_ch, 3, 2), nn.ReLU()) for _ in range(steps - 1)]
    chain.append(nn.Sequential(*_conv_bn(in_ch, out_ch, 3, 2)))
    return nn.Sequential(*chain)


class HighResolutionModule(nn.Module):
    """Parallel BasicBlock branches followed by an exchange of information across resolutions.

    Branch ``b`` keeps its channel count ``channels[b]``, so no block needs a downsample.
    With ``multiscale_output=False`` only the highest-resolution output is fused and returned.
    """

    def __init__(
        self, channels: tuple[int, ...], num_blocks: int, multiscale_output: bool = True
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c, c) for _ in range(num_blocks))) for c in channels
        )
        num_outputs = len(channels) if multiscale_output else 1
        self.fuse_layers = nn.ModuleList()
        for i in range(num_outputs):
            row = nn.ModuleList()
            for j, c in enumerate(channels):
                if j > i:
                    row.append(_upsample_fuse(c, channels[i], 2 ** (j - i)))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    row.append(_downsample_fuse(c, channels[i], i - j))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU()

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        """xs[b] (N, channels[b], H / 2**b, W / 2**b) -> a list of the same shapes
        (only the first entry when ``multiscale_output=False``)."""
        ys = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        fused = []
        for row in self.fuse_layers:
            total = row[0](ys[0])
            for j in range(1, len(ys)):
                total = total + row[j](ys[j])
            fused.append(self.relu(total))
        return fused


def _transition(in_channels: tuple[int, ...], out_channels: tuple[int, ...]) -> nn.ModuleList:
    """Maps a stage's branches to the next stage's, adding one stride-2 branch.

    Entry ``i < len(in_channels)`` takes branch ``i``; the new entry takes the lowest-resolution
    branch of the previous stage.
    """
    layers = nn.ModuleList()
    for i, out_ch in enumerate(out_channels):
        if i < len(in_channels):
            if in_channels[i] == out_ch:
                layers.append(nn.Identity())
            else:
                layers.append(nn.Sequential(*_conv_bn(in_channels[i], out_ch, 3, 1), nn.ReLU()))
        else:
            new_branch = nn.Sequential(*_conv_bn(in_channels[-1], out_ch, 3, 2), nn.ReLU())
            layers.append(nn.Sequential(new_branch))
    return layers


def _apply_transition(transition: nn.ModuleList, xs: list[Tensor]) -> list[Tensor]:
    """Runs ``transition`` on a stage's outputs; the new branch reads the lowest resolution."""
    return [layer(xs[min(i, len(xs) - 1)]) for i, layer in enumerate(transition)]


class HRNet(nn.Module):
    """HRNet-W32 or HRNet-W48 feature extractor returning the stride-4 branch.

    Attributes:
        out_channels: channels of (penultimate, last), both ``width``.
        out_strides: strides of (penultimate, last) w.r.t. the input crop, both 4.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        if width not in _WIDTHS:
            raise ValueError(f"HRNet width must be one of {_WIDTHS}, got {width!r}")
        self.width = width
        self.out_channels: tuple[int, int] = (width, width)
        self.out_strides: tuple[int, int] = (4, 4)

        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.conv2 = nn.Conv2d(_STEM_CHANNELS, _STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.relu = nn.ReLU()
        layer1_out = _STEM_CHANNELS * Bottleneck.expansion
        downsample = nn.Sequential(*_conv_bn(_STEM_CHANNELS, layer1_out, 1, 1))
        self.layer1 = nn.Sequential(
            Bottleneck(_STEM_CHANNELS, _STEM_CHANNELS, downsample=downsample),
            *(Bottleneck(layer1_out, _STEM_CHANNELS) for _ in range(_LAYER1_BLOCKS - 1)),
        )

        c2, c3, c4 = (tuple(width * 2**b for b in range(n)) for n in (2, 3, 4))
        self.transition1 = _transition((layer1_out,), c2)
        self.stage2 = self._make_stage(c2, _MODULES_PER_STAGE[0])
        self.transition2 = _transition(c2, c3)
        self.stage3 = self._make_stage(c3, _MODULES_PER_STAGE[1])
        self.transition3 = _transition(c3, c4)
        # Only the stride-4 branch feeds the head, so the last module fuses into it alone.
        self.stage4 = self._make_stage(c4, _MODULES_PER_STAGE[2], multiscale_output=False)

    @staticmethod
    def _make_stage(
        channels: tuple[int, ...], num_modules: int, multiscale_output: bool = True
    ) -> nn.Sequential:
        modules = [
            HighResolutionModule(
                channels,
                _BLOCKS_PER_BRANCH,
                multiscale_output=multiscale_output or i < num_modules - 1,
            )
            for i in range(num_modules)
        ]
        return nn.Sequential(*modules)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, 3, H, W) ImageNet-normalised RGB crops, H and W multiples of 32.

        Returns (penultimate, last): the stride-4 branch after stage 3 and after stage 4, both
        (N, width, H/4, W/4) in heatmap space.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"HRNet expects input of shape (N, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            # Otherwise a stride-32 map rounds up and no longer matches its upsampled fusions.
            raise ValueError(f"HRNet input height and width must be multiples of 32, got {h}x{w}")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2(_apply_transition(self.transition1, [x]))
        ys = self.stage3(_apply_transition(self.transition2, ys))
        penultimate = ys[0]
        ys = self.stage4(_apply_transition(self.transition3, ys))
        return penultimate, ys[0]
