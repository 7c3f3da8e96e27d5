"""Public checkpoints -> this project's checkpoints (`python app.py weights import`).

The layouts and their key maps are in `ccm.public_layouts`. The pose layouts give whole pose
models. Converting one into another arch with the same backbone (an MMPose HRNet-W32 into
``ccm_hrnet_w32``) keeps the public backbone and leaves the target's heads freshly initialised,
ready for ``python -m train --init``. The ImageNet layouts give backbone weight files for
``build_model(..., backbone_weights=)``.

BatchNorm ``num_batches_tracked`` counters a file lacks are filled with zeros (they only matter
to BN with momentum None, which no model here uses) and are left out of the reports.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ccm.checkpoint import PoseConfig, check_state_dict, read_torch_file
from ccm.geometry import check_heatmap_mapping
from ccm.model import ARCHS, PoseModel, build_model
from ccm.public_layouts import (
    BACKBONE_LAYOUTS,
    POSE_LAYOUTS,
    backbone_of,
    hrnet_to_ccm,
    infer_arch,
    infer_backbone,
    mmpose_to_ccm,
    state_dict_from,
    sub_state,
    timm_to_backbone,
    torchvision_to_backbone,
)

logger = logging.getLogger(__name__)


_COUNTER = "num_batches_tracked"
# timm's HRNet fuses into every branch at the end of stage 4; the pose backbone keeps branch 0.
_TIMM_EXTRA_FUSE = re.compile(r"stage4\.\d+\.fuse_layers\.[1-9]\d*\.")


@dataclass(frozen=True)
class ImportReport:
    """What a conversion did with each tensor (``num_batches_tracked`` counters left out).

    Attributes:
        taken: keys of our state dict filled from the file.
        initialised: keys of our state dict left at their fresh initialisation.
        dropped: keys of the file (after renaming) that were not used.
    """

    taken: tuple[str, ...] = ()
    initialised: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line, keys grouped by module: "taken from the file: backbone (1,690); ..."."""
        parts = [
            f"{label}: {group_keys(keys)}"
            for label, keys in (
                ("taken from the file", self.taken),
                ("freshly initialised", self.initialised),
                ("dropped from the file", self.dropped),
            )
            if keys
        ]
        return "; ".join(parts) or "nothing converted"


def group_keys(keys: tuple[str, ...] | list[str]) -> str:
    """Keys counted by module, e.g. "backbone (1,690), head.final_layer (2)"."""
    counts: dict[str, int] = {}
    for key in keys:
        counts[_group_of(key)] = counts.get(_group_of(key), 0) + 1
    return ", ".join(f"{name} ({n:,})" for name, n in counts.items())


def _group_of(key: str) -> str:
    fuse = re.match(r"(.+?\.fuse_layers\.\d+)\.", key)
    if fuse and not key.startswith("backbone."):
        return fuse.group(1)
    parts = key.split(".")
    if parts[0] in ("head", "aux_head") and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


@dataclass(frozen=True)
class PublicTraining:
    """How a public pose model was trained, which decides how its heatmaps are read.

    Attributes:
        unbiased: sub-pixel (DARK / UDP) training targets instead of nearest-pixel ones.
        flip_alpha: the SSP shift (Eq. 22) that re-aligns its flipped heatmaps.
        sigma: Gaussian sigma of its targets, in heatmap pixels.
        ap: the COCO keypoint AP its publisher reports; ``ap_on`` says on what.
        heatmap_mapping: how its heatmap pixels map to crop pixels
            (``ccm.geometry.HEATMAP_MAPPINGS``): "msra" (crop x -> heatmap x / stride) or "udp".
    """

    unbiased: bool
    flip_alpha: float
    sigma: float = 2.0
    ap: float | None = None
    ap_on: str = ""
    heatmap_mapping: str = "msra"

    def __post_init__(self) -> None:
        check_heatmap_mapping(self.heatmap_mapping)

    def metrics(self) -> dict[str, float | str]:
        if self.ap is None:
            return {}
        return {"AP": self.ap, "split": self.ap_on or "reported by the publisher"}


def guess_training(file_name: str, input_size: tuple[int, int]) -> PublicTraining:
    """Training conventions of a public pose file the manifest does not list, from its name.

    MMPose's MSRAHeatmap codec (plain, or DARK's ``unbiased=True``) and the official HRNet /
    SimpleBaseline code map crop pixel x to heatmap x / stride (heatmap mapping "msra"). Mirroring
    a crop sends x to W - 1 - x, so the flipped-back heatmap lands 1 - 1/stride = 0.75 heatmap
    pixels left of the unflipped one, and SSP's alpha = 0.75 (Eq. 22, j0 = 1) shifts it back.
    UDP's codec maps x to x (W_h - 1) / (W - 1) (mapping "udp"), the first and last pixel centres
    to each other, so its flipped heatmaps need no shift. Both code bases use sigma 2 at 256x192
    and 3 at 384x288.
    """
    name = file_name.lower()
    udp = "udp" in name
    return PublicTraining(
        unbiased=udp or "dark" in name,
        flip_alpha=0.0 if udp else 0.75,
        sigma=3.0 if input_size[0] >= 384 else 2.0,
        heatmap_mapping="udp" if udp else "msra",
    )


def _with_counters(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` plus the BN counters of `own` it lacks, for the modules it covers."""
    filled = dict(state)
    for key, value in own.items():
        if key.endswith(_COUNTER) and key not in filled:
            module = key.removesuffix(_COUNTER)
            if f"{module}weight" in filled or f"{module}running_mean" in filled:
                filled[key] = torch.zeros_like(value)
    return filled


def _counted(keys: Iterable[str]) -> tuple[str, ...]:
    """The keys in their order, without BN counters."""
    return tuple(k for k in keys if not k.endswith(_COUNTER))


def _nothing(key: str) -> bool:
    return False


def _timm_extra_fuse(key: str) -> bool:
    return bool(_TIMM_EXTRA_FUSE.match(key))


def convert_pose_state(
    state: Mapping[str, Tensor],
    arch: str | None = None,
    input_size: tuple[int, int] = (256, 192),
    source: str = "state dict",
    seed: int = 0,
) -> tuple[PoseModel, str, ImportReport]:
    """Load a pose state dict in our key names into a model of `arch` (default: its own).

    When `arch` has the file's head (e.g. both ``hrnet_w32``) every tensor must fit exactly. When
    it has another head on the same backbone (``hrnet_w32`` -> ``ccm_hrnet_w32``) the backbone
    must fit exactly and the heads keep their initialisation, drawn with `seed`. A different
    backbone is refused. Returns (model in eval mode, the file's arch, report).
    """
    source_arch = infer_arch(state)
    target = arch or source_arch
    if backbone_of(target) != backbone_of(source_arch):
        raise ValueError(
            f"{source} holds a {source_arch} model ({backbone_of(source_arch)} backbone); "
            f"{target} needs a {backbone_of(target)} backbone"
        )
    whole = ARCHS[target].head == ARCHS[source_arch].head
    keypoints = int(state["head.final_layer.weight"].shape[0]) if whole else 17
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(target, keypoints, input_size)
    own = model.state_dict()
    used = dict(state) if whole else sub_state(state, "backbone.")
    if whole:
        used = _with_counters(used, own)
        check_state_dict(model, used, f"{source} ({source_arch} -> {target})")
        model.load_state_dict(used)
    else:
        used = _with_counters(used, model.backbone.state_dict())
        check_state_dict(model.backbone, used, f"{source} backbone ({source_arch} -> {target})")
        model.backbone.load_state_dict(used)
        used = {f"backbone.{k}": v for k, v in used.items()}
    report = ImportReport(
        taken=_counted(k for k in own if k in used),
        initialised=_counted(k for k in own if k not in used),
        dropped=_counted(k for k in state if k not in used),
    )
    return model.eval(), source_arch, report


def convert_public_pose(
    state: Mapping[str, Tensor],
    layout: str,
    arch: str | None = None,
    input_size: tuple[int, int] = (256, 192),
    source: str = "state dict",
    seed: int = 0,
) -> tuple[PoseModel, str, ImportReport]:
    """:func:`convert_pose_state` on a state dict in a public pose layout ("mmpose", "hrnet")."""
    if layout not in POSE_LAYOUTS:
        raise ValueError(f"{layout!r} is not a pose checkpoint layout; use one of {POSE_LAYOUTS}")
    renamed, dropped = (mmpose_to_ccm if layout == "mmpose" else hrnet_to_ccm)(state)
    model, source_arch, report = convert_pose_state(renamed, arch, input_size, source, seed)
    return model, source_arch, replace(report, dropped=dropped + report.dropped)


def fit_backbone(
    state: Mapping[str, Tensor],
    backbone: nn.Module,
    source: str,
    droppable: Callable[[str], bool] = _nothing,
) -> tuple[dict[str, Tensor], ImportReport]:
    """Check a backbone state dict against `backbone`; returns (complete tensors, report).

    Keys `backbone` lacks are dropped when `droppable` says so and refused otherwise; missing
    keys and shape mismatches are refused.
    """
    own = backbone.state_dict()
    dropped = tuple(k for k in state if k not in own and droppable(k))
    kept = _with_counters({k: v for k, v in state.items() if k not in dropped}, own)
    check_state_dict(backbone, kept, source)
    return kept, ImportReport(taken=_counted(kept), dropped=_counted(dropped))


def _backbone_module(backbone: str, arch: str | None) -> nn.Module:
    if arch is not None:
        return ARCHS[arch].backbone()
    for name, spec in ARCHS.items():
        if backbone_of(name) == backbone:
            return spec.backbone()
    raise ValueError(f"no arch here is built on a {backbone} backbone")


@dataclass(frozen=True)
class ImportedPose:
    """A public pose checkpoint converted: the model, its config and what came from where.

    `source` is the record stored in the converted checkpoint (file name, SHA-256, layout).
    """

    model: PoseModel
    config: PoseConfig
    source_arch: str
    report: ImportReport
    source: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportedBackbone:
    """ImageNet weights converted to a backbone's own key names."""

    tensors: dict[str, Tensor]
    backbone: str
    report: ImportReport
    source: dict[str, str] = field(default_factory=dict)


def import_pose_checkpoint(
    path: str | Path,
    layout: str,
    *,
    arch: str | None = None,
    input_size: tuple[int, int] = (256, 192),
    training: PublicTraining | None = None,
    expected_sha256: str | None = None,
    trust: bool = False,
    seed: int = 0,
) -> ImportedPose:
    """Convert a public pose file (layout "mmpose" or "hrnet") into a model and its config.

    The file is read with :func:`ccm.checkpoint.read_torch_file` (`expected_sha256`, `trust`:
    when it may be unpickled in full). Into the file's own arch, the config records `training`
    (default: :func:`guess_training` from the file name) and its AP; into a CCM arch on the same
    backbone, the heads are fresh and untrained, so the config takes this project's training
    conventions and no AP.
    """
    if layout not in POSE_LAYOUTS:
        raise ValueError(f"{layout!r} is not a pose checkpoint layout; use one of {POSE_LAYOUTS}")
    path = Path(path)
    checkpoint, sha256 = read_torch_file(path, expected_sha256=expected_sha256, trust=trust)
    state = state_dict_from(checkpoint, str(path))
    model, source_arch, report = convert_public_pose(
        state, layout, arch, input_size, str(path), seed
    )
    target = arch or source_arch
    if ARCHS[target].head == ARCHS[source_arch].head:
        training = training or guess_training(path.name, input_size)
        config = PoseConfig(
            target,
            model.num_keypoints,
            input_size,
            sigma=training.sigma,
            unbiased=training.unbiased,
            flip_alpha=training.flip_alpha,
            heatmap_mapping=training.heatmap_mapping,
            recipe=f"{layout} checkpoint {path.name}",
            metrics=training.metrics(),
        )
    else:
        config = PoseConfig(
            target,
            model.num_keypoints,
            input_size,
            recipe=f"backbone of {path.name} ({source_arch}, {layout}); heads freshly "
            "initialised, untrained",
        )
    logger.info("%s -> %s: %s", path.name, target, report.summary())
    source = {"file": path.name, "sha256": sha256, "layout": layout, "arch": source_arch}
    return ImportedPose(model, config, source_arch, report, source)


def import_backbone(
    path: str | Path,
    layout: str,
    *,
    arch: str | None = None,
    expected_sha256: str | None = None,
    trust: bool = False,
) -> ImportedBackbone:
    """Convert an ImageNet file (layout "torchvision" or "timm") to backbone weights.

    The encoder is recognised from the keys; with `arch` it must be that arch's encoder. Every
    backbone tensor must be in the file with the right shape.
    """
    if layout not in BACKBONE_LAYOUTS:
        raise ValueError(f"{layout!r} is not a backbone layout; use one of {BACKBONE_LAYOUTS}")
    path = Path(path)
    checkpoint, sha256 = read_torch_file(path, expected_sha256=expected_sha256, trust=trust)
    state = state_dict_from(checkpoint, str(path))
    if layout == "torchvision":
        renamed, dropped = torchvision_to_backbone(state)
        droppable = _nothing
    else:
        renamed, dropped = timm_to_backbone(state)
        droppable = _timm_extra_fuse
    backbone = infer_backbone(renamed)
    if arch is not None and backbone_of(arch) != backbone:
        raise ValueError(
            f"{path} holds {backbone} weights; {arch} needs a {backbone_of(arch)} backbone"
        )
    module = _backbone_module(backbone, arch)
    tensors, report = fit_backbone(renamed, module, f"{path} ({backbone})", droppable)
    report = replace(report, dropped=dropped + report.dropped)
    logger.info("%s -> %s backbone: %s", path.name, backbone, report.summary())
    source = {"file": path.name, "sha256": sha256, "layout": layout}
    return ImportedBackbone(tensors, backbone, report, source)
