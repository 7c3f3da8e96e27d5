"""Model factory: CCM networks (paper Sec. 3.2) and the baselines they are compared with.

``build_model(arch, num_keypoints, input_size)`` returns a :class:`PoseModel` whose eval forward
maps an ImageNet-normalised RGB crop (N, 3, H, W) to heatmaps (N, K, H/4, W/4) in heatmap space
(stride 4 of the crop). In training mode it returns ``(main, aux)``: the auxiliary decoder's
heatmaps for CCM (Sec. 3.2.3, supervised with Eq. 6), ``None`` for the baselines.

``python -m ccm.model --summary`` prints parameters and GFLOPs of every arch next to Table 7.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ccm.backbones.hrnet import HRNet
from ccm.backbones.mobile import MobileNetV2, ShuffleNetV2
from ccm.backbones.resnet import ResNet
from ccm.context_mixer import CascadedDecoder
from ccm.heads import ConvHead, DeconvHead, init_head_weights

logger = logging.getLogger(__name__)

HEATMAP_STRIDE = 4
INPUT_MULTIPLE = 32


@dataclass(frozen=True)
class ArchSpec:
    """How to build one arch, and what the paper's Table 7 reports for it.

    ``head`` is "ccm" (cascaded CM decoders on both encoder outputs, widths ``cm_widths``),
    "deconv" (SimpleBaseline) or "conv" (HRNet's 1x1 head). ``paper_*`` are Table 7's
    #Params (millions) and GFLOPs at ``paper_input`` (H, W); None where it gives none.
    """

    backbone: Callable[[], nn.Module]
    head: Literal["ccm", "deconv", "conv"]
    cm_widths: tuple[int, ...] = ()
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    paper_input: tuple[int, int] = (256, 192)


_LARGE = (384, 288)

# CM widths: Sec. 6.1 for ResNet and HRNet. The paper gives none for the small backbones;
# these land on Table 7's #Params (10.1M, 9.72M) and on its "about 15% more GFLOPs" than
# the SimpleBaseline counterpart (Sec. 6.3), with the widest CM at the highest resolution.
ARCHS: dict[str, ArchSpec] = {
    "ccm_resnet50": ArchSpec(
        partial(ResNet, 50, dilate_last=True), "ccm", (256, 256, 256), 40.7, 45.4
    ),
    "ccm_resnet152": ArchSpec(partial(ResNet, 152), "ccm", (128, 96, 64), 63.5, 40.1, _LARGE),
    "ccm_hrnet_w32": ArchSpec(partial(HRNet, width=32), "ccm", (32,), 28.6, 7.92),
    "ccm_hrnet_w48": ArchSpec(partial(HRNet, width=48), "ccm", (48,), 63.7, 36.6, _LARGE),
    "ccm_mobilenetv2": ArchSpec(MobileNetV2, "ccm", (160, 160, 256), 10.1, 4.80),
    "ccm_shufflenetv2": ArchSpec(ShuffleNetV2, "ccm", (192, 192, 224), 9.72, 4.75),
    "simplebaseline_resnet50": ArchSpec(partial(ResNet, 50), "deconv", (), 34.0, 8.20),
    "simplebaseline_resnet152": ArchSpec(partial(ResNet, 152), "deconv", (), 68.6, 35.9, _LARGE),
    "simplebaseline_mobilenetv2": ArchSpec(MobileNetV2, "deconv", (), 9.57, 4.17),
    "simplebaseline_shufflenetv2": ArchSpec(ShuffleNetV2, "deconv", (), 8.78, 4.07),
    "hrnet_w32": ArchSpec(partial(HRNet, width=32), "conv", (), 28.5, 7.68),
    "hrnet_w48": ArchSpec(partial(HRNet, width=48), "conv", (), 63.6, 35.4, _LARGE),
}


class PoseModel(nn.Module):
    """Encoder + heatmap head (+ auxiliary decoder for CCM).

    Module names: ``backbone``, ``head`` (``head.final_layer`` is the prediction layer) and
    ``aux_head`` (CCM only). ``input_size`` (H, W) is the crop size the model was built for;
    any multiple of 32 works at run time.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        input_size: tuple[int, int] = (256, 192),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.input_size = input_size
        self.num_keypoints: int = head.final_layer.out_channels

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder outputs ``(penultimate, last)`` for crops (N, 3, H, W)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected crops of shape (N, 3, H, W), got {tuple(x.shape)}")
        if x.shape[2] % INPUT_MULTIPLE or x.shape[3] % INPUT_MULTIPLE:
            raise ValueError(
                f"crop height and width must be multiples of {INPUT_MULTIPLE}, "
                f"got {tuple(x.shape[2:])}"
            )
        return self.backbone(x)

    def forward_head(
        self, features: tuple[Tensor, Tensor]
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Heatmaps (N, K, H/4, W/4); in training mode ``(main, aux or None)``."""
        penultimate, last = features
        main = self.head(last)
        if not self.training:
            return main
        aux = self.aux_head(penultimate) if self.aux_head is not None else None
        return main, aux

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor | None]:
        return self.forward_head(self.forward_features(x))


def _ccm_decoder(
    in_channels: int, in_stride: int, widths: tuple[int, ...], num_keypoints: int
) -> CascadedDecoder:
    """A cascaded decoder that brings a stride-``in_stride`` feature to stride 4.

    The first log2(in_stride / 4) CMs upsample 2x and the rest keep the size (ResNet-50 with
    a dilated layer4: stride 16, so 2x, 2x, 1x; HRNet: stride 4, so one CM at 1x).
    """
    n_up = int(round(math.log2(in_stride / HEATMAP_STRIDE)))
    if in_stride != HEATMAP_STRIDE * 2**n_up or n_up > len(widths):
        raise ValueError(
            f"{len(widths)} CMs cannot bring a stride-{in_stride} feature to stride "
            f"{HEATMAP_STRIDE}"
        )
    upsample = (True,) * n_up + (False,) * (len(widths) - n_up)
    return CascadedDecoder(in_channels, widths, upsample, num_keypoints)


def _build_head(
    spec: ArchSpec, backbone: nn.Module, num_keypoints: int
) -> tuple[nn.Module, nn.Module | None]:
    (c_pen, c_last), (s_pen, s_last) = backbone.out_channels, backbone.out_strides
    if spec.head == "ccm":
        head = _ccm_decoder(c_last, s_last, spec.cm_widths, num_keypoints)
        # Sec. 3.2.3: same structure, own weights, on the penultimate encoder stage.
        aux = _ccm_decoder(c_pen, s_pen, spec.cm_widths, num_keypoints)
        return head, aux
    if spec.head == "deconv":
        return DeconvHead(c_last, num_keypoints), None
    if spec.head == "conv":
        return ConvHead(c_last, num_keypoints), None
    raise ValueError(f"unknown head kind {spec.head!r}; expected 'ccm', 'deconv' or 'conv'")


def build_model(
    arch: str,
    num_keypoints: int = 17,
    input_size: tuple[int, int] = (256, 192),
    *,
    backbone_weights: str | Path | None = None,
) -> PoseModel:
    """Build a pose network.

    Args:
        arch: one of :data:`ARCHS` (e.g. "ccm_resnet50", "simplebaseline_resnet50", "hrnet_w32").
        num_keypoints: heatmap channels K (17 for COCO).
        input_size: crop (H, W) in pixels, both multiples of 32.
        backbone_weights: optional local ImageNet file (.pth/.pt or .safetensors) with
            torchvision / timm key names; see :func:`load_backbone_weights`. Never downloads.

    Returns a :class:`PoseModel`: eval forward (N, 3, H, W) -> (N, K, H/4, W/4).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    if num_keypoints < 1:
        raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
    if len(input_size) != 2 or any(int(s) != s or s <= 0 or s % INPUT_MULTIPLE for s in input_size):
        raise ValueError(
            f"input_size must be (H, W), positive multiples of {INPUT_MULTIPLE}, got {input_size}"
        )
    spec = ARCHS[arch]
    backbone = spec.backbone()
    head, aux = _build_head(spec, backbone, num_keypoints)
    for module in (head, aux):
        if module is not None:
            init_head_weights(module)
    model = PoseModel(backbone, head, aux, (int(input_size[0]), int(input_size[1])))
    if backbone_weights is not None:
        report = load_backbone_weights(model.backbone, backbone_weights)
        if report.missing:
            logger.warning(
                "%s: %d backbone parameters not in %s, left at random init: %s",
                arch,
                len(report.missing),
                backbone_weights,
                ", ".join(report.missing),
            )
        if report.unexpected:
            logger.warning(
                "%s: %d keys in %s unused: %s",
                arch,
                len(report.unexpected),
                backbone_weights,
                ", ".join(report.unexpected),
            )
    return model


@dataclass(frozen=True)
class LoadReport:
    """Keys of a backbone state dict that a file did not provide / provided in excess."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


# Classifier / prefix conventions of torchvision, timm and wrapped checkpoints.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.fc.", "last_linear.")
_WRAPPER_PREFIXES = ("module.", "backbone.", "model.")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a local .safetensors or torch (.pth/.pt/.bin) state dict, without pickle code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> LoadReport:
    """Initialise ``backbone`` from a local ImageNet state dict and report key mismatches.

    Wrapper prefixes (``module.``, ``backbone.``, ``model.``) are stripped and classifier
    keys dropped; a backbone with ``adapt_state_dict`` renames foreign layouts (torchvision
    MobileNetV2). A tensor whose shape disagrees raises ValueError.
    """
    state = read_state_dict(path)
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if not key.startswith(_CLASSIFIER_PREFIXES):
            cleaned[key] = value
    adapt = getattr(backbone, "adapt_state_dict", None)
    if adapt is not None:
        cleaned = adapt(cleaned)
    own = backbone.state_dict()
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in cleaned.items()
        if k in own and v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"shape mismatch loading {path}: " + "; ".join(bad))
    result = backbone.load_state_dict(cleaned, strict=False)
    return LoadReport(tuple(result.missing_keys), tuple(result.unexpected_keys))


def count_params(model: nn.Module) -> int:
    """Trainable + frozen parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: tuple[int, int], training: bool = False) -> float:
    """Multiply-accumulates (G) of one forward of a single crop at ``input_size``.

    Runs on whatever device the model is on (the summary uses the meta device, so nothing is
    computed). ``FlopCounterMode`` counts 2 FLOPs per multiply-add of convs (transposed convs
    by input pixels, i.e. the true MAC count) and matmuls, and ignores BN, activations,
    pooling and interpolation; the result is halved to give MACs, the unit the pose papers
    call "GFLOPs". ``training=True`` also runs the auxiliary decoder (on a batch of 2, which
    training-mode BN needs, then halved) on a copy, so BN running statistics are untouched.
    The model's mode is left as it was.
    """
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2 if training else 1
    device = next(model.parameters()).device
    x = torch.zeros(batch, 3, *input_size, device=device)
    was_training = model.training
    probe = copy.deepcopy(model).train() if training else model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            probe(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2e9 / batch


@dataclass(frozen=True)
class SummaryRow:
    """One line of the ``--summary`` table (params in millions, compute in GMACs)."""

    arch: str
    input_size: tuple[int, int]
    params_m: float
    paper_params_m: float | None
    gmacs: float
    gmacs_train: float
    paper_gflops: float | None

    @property
    def params_diff_pct(self) -> float | None:
        if self.paper_params_m is None:
            return None
        return 100.0 * (self.params_m - self.paper_params_m) / self.paper_params_m


def summary_rows() -> list[SummaryRow]:
    """Params and GMACs of every arch at its Table 7 input size (built on the meta device)."""
    rows = []
    for arch, spec in ARCHS.items():
        with torch.device("meta"):
            model = build_model(arch, input_size=spec.paper_input)
        rows.append(
            SummaryRow(
                arch=arch,
                input_size=spec.paper_input,
                params_m=count_params(model) / 1e6,
                paper_params_m=spec.paper_params_m,
                gmacs=count_gmacs(model, spec.paper_input),
                gmacs_train=count_gmacs(model, spec.paper_input, training=True),
                paper_gflops=spec.paper_gflops,
            )
        )
    return rows


def format_summary(rows: list[SummaryRow]) -> str:
    """A Markdown table of :func:`summary_rows`."""

    def opt(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        "| arch | input | params (M) | Table 7 params (M) | diff % "
        "| GMACs eval | GMACs train (+aux) | Table 7 GFLOPs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        h, w = r.input_size
        lines.append(
            f"| {r.arch} | {h}x{w} | {r.params_m:.2f} | {opt(r.paper_params_m, '.2f')} "
            f"| {opt(r.params_diff_pct, '+.1f')} | {r.gmacs:.2f} | {r.gmacs_train:.2f} "
            f"| {opt(r.paper_gflops, '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ccm.model", description=__doc__)
    parser.add_argument(
        "--summary", action="store_true", help="print params / GMACs of every arch vs Table 7"
    )
    args = parser.parse_args(argv)
    if not args.summary:
        parser.print_help()
        return
    print(format_summary(summary_rows()))


if __name__ == "__main__":
    main()
