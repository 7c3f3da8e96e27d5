"""Public checkpoint layouts: their key names -> ours, and which arch a state dict is.

Layouts (the `--from` of `python app.py weights import`):
- ``mmpose``: MMPose 1.x top-down heatmap models, ``{"meta", "state_dict"}`` with keys
  ``backbone.*``, ``head.final_layer.*`` and ``head.deconv_layers.{0,1,3,4,6,7}.*`` (our module
  names already); ``data_preprocessor.*`` is dropped and MMPose 0.x's ``keypoint_head.`` renamed
  ``head.``.
- ``hrnet``: the official HRNet / SimpleBaseline pose code, the same module names without a
  prefix: ``final_layer.*`` and ``deconv_layers.*`` go under ``head.``, everything else under
  ``backbone.``; a DataParallel ``module.`` prefix is stripped.
- ``torchvision``: ImageNet classifiers; ``fc.*`` / ``classifier.*`` are dropped and MobileNetV2's
  ``features.*`` renamed by :meth:`MobileNetV2.adapt_state_dict`.
- ``timm``: ImageNet classifiers. Its ``hrnet_w32`` / ``hrnet_w48`` carry a classification head
  (``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier``) and fuse every branch
  in the last stage-4 module (``stage4.2.fuse_layers.{1,2,3}``), which the pose backbone (fusing
  into the stride-4 branch only) lacks: these are dropped and reported.

`ccm.importers` converts whole checkpoints with these maps.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ccm.backbones.mobile import MobileNetV2
from ccm.model import ARCHS

POSE_LAYOUTS = ("mmpose", "hrnet")
BACKBONE_LAYOUTS = ("torchvision", "timm")
LAYOUTS = POSE_LAYOUTS + BACKBONE_LAYOUTS
_TORCHVISION_HEAD = ("fc.", "classifier.")
_TIMM_HEAD = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.", "fc.", "head.")


def state_dict_from(checkpoint: object, source: str) -> dict[str, Tensor]:
    """The tensors of a loaded checkpoint: ``{"state_dict": ...}``, ``{"model": ...}`` or bare."""
    state = checkpoint
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{source} holds no state dict")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise ValueError(f"{source}: state dict entries that are not tensors: {not_tensors[:5]}")
    return {str(k): v for k, v in state.items()}


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def mmpose_to_ccm(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """MMPose top-down keys -> ours; returns (renamed state, dropped keys)."""
    out: dict[str, Tensor] = {}
    dropped = []
    for key, value in _strip_prefix(state, "module.").items():
        if key.startswith("data_preprocessor."):
            dropped.append(key)
            continue
        if key.startswith("keypoint_head."):  # MMPose 0.x
            key = "head." + key.removeprefix("keypoint_head.")
        out[key] = value
    odd = sorted(k for k in out if not k.startswith(("backbone.", "head.")))
    if odd:
        raise ValueError(
            f"keys outside backbone./head. ({len(odd)}): {', '.join(odd[:5])}; "
            "this is not an MMPose top-down heatmap checkpoint"
        )
    return out, tuple(dropped)


def hrnet_to_ccm(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Official HRNet / SimpleBaseline keys -> ours; returns (renamed state, dropped keys)."""
    out = {}
    for key, value in _strip_prefix(state, "module.").items():
        head = key.startswith(("final_layer.", "deconv_layers."))
        out[("head." if head else "backbone.") + key] = value
    return out, ()


def torchvision_to_backbone(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """torchvision ImageNet keys -> backbone keys; returns (renamed state, dropped keys)."""
    state = _strip_prefix(state, "module.")
    dropped = tuple(k for k in state if k.startswith(_TORCHVISION_HEAD))
    kept = {k: v for k, v in state.items() if not k.startswith(_TORCHVISION_HEAD)}
    if any(k.startswith("features.") for k in kept):
        kept = MobileNetV2.adapt_state_dict(kept)
    return kept, dropped


def timm_to_backbone(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """timm ImageNet keys -> backbone keys; returns (renamed state, dropped keys).

    The classification head goes here; the extra stage-4 fusions when fitting the backbone.
    """
    state = _strip_prefix(state, "module.")
    dropped = tuple(k for k in state if k.startswith(_TIMM_HEAD))
    return {k: v for k, v in state.items() if not k.startswith(_TIMM_HEAD)}, dropped


def backbone_of(arch: str) -> str:
    """The encoder an arch is built on: "ccm_resnet50" -> "resnet50", "hrnet_w32" -> itself."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    return arch.removeprefix("ccm_").removeprefix("simplebaseline_")


def infer_backbone(state: Mapping[str, Tensor]) -> str:
    """Which encoder a backbone state dict (its own key names) belongs to, e.g. "hrnet_w32"."""
    if "transition1.0.0.weight" in state and any(k.startswith("stage4.") for k in state):
        return f"hrnet_w{state['transition1.0.0.weight'].shape[0]}"
    if "conv2.conv.weight" in state and any(k.startswith("layer7.") for k in state):
        return "mobilenetv2"
    if "conv5.0.weight" in state and any(k.startswith("stage2.") for k in state):
        return "shufflenetv2"
    if "conv1.weight" in state and any(k.startswith("layer4.") for k in state):
        blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
        bottleneck = "layer1.0.conv3.weight" in state
        depths = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101, (True, 36): 152}
        if (bottleneck, blocks) in depths:
            return f"resnet{depths[bottleneck, blocks]}"
    sample = ", ".join(list(state)[:3])
    raise ValueError(
        f"cannot tell which backbone these weights belong to (keys start {sample}); "
        "expected HRNet, ResNet, MobileNetV2 or ShuffleNetV2 names"
    )


def infer_arch(state: Mapping[str, Tensor]) -> str:
    """The arch of a pose state dict in our key names (``backbone.*``, ``head.*``)."""
    backbone = infer_backbone(sub_state(state, "backbone."))
    if any(k.startswith(("aux_head.", "head.mixers.")) for k in state):
        arch = f"ccm_{backbone}"
    elif any(k.startswith("head.deconv_layers.") for k in state):
        arch = f"simplebaseline_{backbone}"
    elif "head.final_layer.weight" in state:
        arch = backbone
    else:
        raise ValueError("the file has no head.final_layer: not a heatmap pose model")
    if arch not in ARCHS:
        raise ValueError(
            f"a {backbone} backbone with this head makes {arch}, not an arch built here"
        )
    return arch


def sub_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
