"""The network a run starts from: fresh heads on a backbone from ImageNet weights or from a
public pose checkpoint.

`--backbone-weights FILE` takes either

- ImageNet weights (torchvision / timm key names, or `weights import ... --from torchvision`
  output), loaded by `ccm.model.load_backbone_weights`; or
- a ccm-pose checkpoint whose arch has the same backbone, e.g. MMPose's HRNet-W32 DARK as
  `python app.py weights fetch mmpose-hrnet-w32-dark-256x192` converts it
  (`weights/mmpose-hrnet-w32-dark-256x192.safetensors`, arch hrnet_w32) for a `ccm_hrnet_w32`
  run: its encoder is taken whole and every other part (the Context Mixer, the cascade, the
  heads) starts fresh, so the run trains them on its own data.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor

from ccm.checkpoint import check_state_dict, read_checkpoint
from ccm.model import PoseModel, build_model
from ccm.public_layouts import backbone_of

logger = logging.getLogger(__name__)


def pose_checkpoint_backbone(path: str | Path, arch: str) -> dict[str, Tensor] | None:
    """The backbone tensors (the encoder's own key names) of the ccm-pose checkpoint at `path`
    for a model of `arch`; None when `path` is no ccm-pose checkpoint (ImageNet weights).

    A checkpoint on another backbone is refused with a ValueError that names both.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    try:
        config, tensors = read_checkpoint(path)
    except ValueError:  # backbone weights or a plain state dict: ImageNet weights
        return None
    if backbone_of(config.arch) != backbone_of(arch):
        raise ValueError(
            f"--backbone-weights {path} is a {config.arch} checkpoint (a "
            f"{backbone_of(config.arch)} backbone); {arch} needs a {backbone_of(arch)} backbone"
        )
    return {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}


def build_initial_model(
    arch: str,
    num_keypoints: int,
    input_size: tuple[int, int],
    backbone_weights: str | Path | None = None,
) -> PoseModel:
    """`build_model(arch, ...)` with its backbone from `backbone_weights` (see the module
    docstring), every other module freshly initialised."""
    backbone = None
    if backbone_weights is not None:
        backbone = pose_checkpoint_backbone(backbone_weights, arch)
    if backbone is None:
        return build_model(arch, num_keypoints, input_size, backbone_weights=backbone_weights)
    model = build_model(arch, num_keypoints, input_size)
    check_state_dict(model.backbone, backbone, f"--backbone-weights {backbone_weights} backbone")
    model.backbone.load_state_dict(backbone)
    logger.info(
        "backbone of %s from %s (%d tensors); the rest starts fresh",
        arch,
        backbone_weights,
        len(backbone),
    )
    return model
