"""Pose checkpoints: safetensors weights with the config that builds their model inside.

A file is refused, with a message that says why, when it is not safetensors, carries no ccm-pose
config, holds tensors that do not fit the model its config builds, or has a SHA-256 other than
the one it is expected to have. A checkpoint may also record where its weights came from
(`source`: the public file and its SHA-256), which is how a converted public checkpoint is
traced back to a verified download.

Public checkpoints come as torch pickles. `read_torch_file` reads them with
`torch.load(weights_only=True)`, which runs no code; a file that needs more (MMPose keeps NumPy
objects in its `meta`) is unpickled in full only when its SHA-256 matches the one it is expected
to have, or when the caller says it trusts the file. Backbone weights (`save_backbone_weights`)
are safetensors with the backbone's own key names, readable by
`ccm.model.build_model(..., backbone_weights=)`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ccm.codec import HeatmapCodec
from ccm.geometry import check_heatmap_mapping
from ccm.model import HEATMAP_STRIDE, build_model

logger = logging.getLogger(__name__)

FORMAT = "ccm-pose/1"
BACKBONE_FORMAT = "ccm-pose-backbone/1"
_HEX_HASH = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class PoseConfig:
    """Everything needed to rebuild a pose model and read its heatmaps the way it was trained.

    `unbiased` and `sigma` describe the training targets; `flip_alpha` is the SSP shift (Eq. 22)
    that suits the model's coordinate convention (0 for this project's grids, 0.75 for models
    trained with SimpleBaseline's mapping). `heatmap_mapping` is that convention, how the model's
    heatmap pixels relate to crop pixels (`ccm.geometry.HEATMAP_MAPPINGS`): "pixel-center" for
    models trained here, "msra" for MMPose MSRAHeatmap / official HRNet / SimpleBaseline / DarkPose
    models, "udp" for MMPose UDPHeatmap ones; decoding converts to "pixel-center" with
    `ccm.geometry.to_pixel_center_heatmap`. A config saved before the field existed reads as
    "pixel-center". `recipe` and `metrics` record how it was trained and what it reached (e.g.
    {"AP": 0.71, "split": "synthetic-val seed 7"}).
    """

    arch: str
    num_keypoints: int = 17
    input_size: tuple[int, int] = (256, 192)
    sigma: float = 2.0
    unbiased: bool = True
    flip_alpha: float = 0.0
    heatmap_mapping: str = "pixel-center"
    keypoint_set: str = "coco17"
    recipe: str = ""
    metrics: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_heatmap_mapping(self.heatmap_mapping)

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return (self.input_size[0] // HEATMAP_STRIDE, self.input_size[1] // HEATMAP_STRIDE)

    def build_model(self) -> nn.Module:
        return build_model(self.arch, self.num_keypoints, self.input_size)

    def codec(
        self, method: str = "parabola", blur_kernel: int = 0, flip_alpha: float | None = None
    ) -> HeatmapCodec:
        """The codec that encodes this model's targets and decodes its heatmaps to image pixels;
        `flip_alpha` None takes the model's own SSP alpha."""
        return HeatmapCodec(
            self.input_size, self.heatmap_size, self.sigma, self.unbiased, method, blur_kernel,
            self.heatmap_mapping, self.flip_alpha if flip_alpha is None else flip_alpha,
        )  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PoseConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"checkpoint config has unknown fields {unknown}")
        data["input_size"] = tuple(data.get("input_size", (256, 192)))
        return cls(**data)


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_hash_spec(expected: str) -> str:
    """`expected` lower-cased, after checking it is 8 to 64 hex digits (a SHA-256 or its prefix)."""
    spec = expected.strip().lower()
    if not _HEX_HASH.fullmatch(spec):
        raise ValueError(
            f"expected SHA-256 {expected!r} is not 8 to 64 hex digits (a full hash or its prefix)"
        )
    return spec


def hash_matches(actual: str, expected: str) -> bool:
    """Whether the full hex SHA-256 `actual` is, or starts with, `expected` (8 to 64 hex digits).

    Public files often publish only the first 8 hex digits (MMPose, torchvision): that catches a
    corrupted or wrong file, not a crafted one; a full hash catches both.
    """
    return actual.lower().startswith(check_hash_spec(expected))


def verify_sha256(path: str | Path, expected: str, actual: str | None = None) -> str:
    """The file's full SHA-256, after checking it against `expected`; ValueError if it differs."""
    spec = check_hash_spec(expected)
    actual = actual or sha256_of(path)
    if not actual.startswith(spec):
        raise ValueError(
            f"{path} has SHA-256 {actual}, but {spec} is expected"
            f"{' (a prefix)' if len(spec) < 64 else ''}: the file is corrupted, incomplete or "
            "not the one listed; delete it and fetch it again"
        )
    return actual


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: PoseConfig,
    source: Mapping[str, str] | None = None,
) -> Path:
    """Write the model's weights and `config` to `path` (safetensors), atomically.

    `source` records where the weights came from, e.g. {"file": ..., "sha256": ..., "manifest":
    NAME} for a converted public checkpoint; `read_source` returns it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": config.to_json()}
    if source:
        metadata["source"] = json.dumps(dict(source), sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _read_safetensors(path: Path, tensors: bool) -> tuple[dict[str, str], dict[str, Tensor]]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    return metadata, weights


def read_checkpoint(path: str | Path, tensors: bool = True) -> tuple[PoseConfig, dict[str, Tensor]]:
    """Config and tensors of a checkpoint, without building a model; `tensors=False` skips them."""
    path = Path(path)
    metadata, weights = _read_safetensors(path, tensors)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"{path} carries no ccm-pose config (format {metadata.get('format')!r})")
    return PoseConfig.from_json(metadata["config"]), weights


def read_source(path: str | Path) -> dict[str, str]:
    """The `source` record a checkpoint was saved with ({} when it has none)."""
    metadata, _ = _read_safetensors(Path(path), tensors=False)
    try:
        source = json.loads(metadata.get("source", "{}"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} has an unreadable source record ({err})") from err
    if not isinstance(source, dict):
        raise ValueError(f"{path} has a source record that is not a mapping")
    return {str(k): str(v) for k, v in source.items()}


def check_state_dict(model: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Raise ValueError naming missing, unexpected and mis-shaped tensors, if there are any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    )
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        )
        if items
    ]
    if problems:
        raise ValueError(f"{source} does not match its model: " + "; ".join(problems))


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    expected_sha256: str | None = None,
) -> tuple[nn.Module, PoseConfig]:
    """Rebuild the model a checkpoint describes, load its weights, and return it in eval mode.

    With `expected_sha256` (full or a prefix, e.g. from the manifest) the file is hashed first
    and refused if it differs.
    """
    if expected_sha256 is not None and Path(path).is_file():
        verify_sha256(path, expected_sha256)
    config, tensors = read_checkpoint(path)
    model = config.build_model()
    check_state_dict(model, tensors, f"{path} ({config.arch})")
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def save_backbone_weights(
    path: str | Path,
    tensors: Mapping[str, Tensor],
    backbone: str,
    source: Mapping[str, str] | None = None,
) -> Path:
    """Write a backbone state dict (the backbone's own key names, no prefix) as safetensors.

    `backbone` names the encoder ("resnet50", "hrnet_w32", ...). The file is what
    `ccm.model.build_model(arch, backbone_weights=path)` and `python -m train
    --backbone-weights` read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": BACKBONE_FORMAT, "backbone": backbone}
    if source:
        metadata["source"] = json.dumps(dict(source), sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata
    )
    os.replace(tmp, path)
    return path


def read_torch_file(
    path: str | Path, *, expected_sha256: str | None = None, trust: bool = False
) -> tuple[object, str]:
    """Load a torch pickle (.pth/.pt) safely; returns (the loaded object, the file's SHA-256).

    The file is hashed first; with `expected_sha256` (full or a prefix) a different hash is
    refused whatever `trust` says. It is then read with `torch.load(weights_only=True)`, which
    runs no code. A file that holds more than tensors and containers (MMPose's `meta` keeps NumPy
    arrays) is unpickled in full, which can run arbitrary code, only when its hash matched
    `expected_sha256` or `trust` is True; otherwise it is refused with a message saying so.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    actual = sha256_of(path)
    verified = False
    if expected_sha256:
        verify_sha256(path, expected_sha256, actual)
        verified = True
    try:
        return torch.load(path, map_location="cpu", weights_only=True), actual
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise _unreadable(path, err) from err
        if not (verified or trust):
            raise ValueError(
                f"{path} holds Python objects beyond tensors ({_unsafe_globals(path)}), and "
                "loading those runs code from the file. Its SHA-256 "
                f"{actual[:16]}... is not verified against the manifest, so it is not unpickled. "
                "Fetch it with `weights fetch NAME` (or list its hash in weights/manifest.toml), "
                "or pass --trust if you trust where it came from."
            ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise _unreadable(path, err) from err
    reason = "its SHA-256 matches the manifest" if verified else "the caller trusts it"
    logger.info("unpickling %s in full: %s", path, reason)
    try:
        return torch.load(path, map_location="cpu", weights_only=False), actual
    except Exception as err:  # any unpickling failure means the file is unusable
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: BaseException) -> ValueError:
    text = str(err).strip()
    reason = text.splitlines()[0] if text else type(err).__name__
    return ValueError(f"{path} is not a readable torch checkpoint ({reason})")


def _unsafe_globals(path: Path) -> str:
    """The non-tensor globals a zip checkpoint would import, listed without unpickling it."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # older or non-zip files: the names are only a courtesy
        return "non-tensor objects"
    return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "") or "non-tensor objects"


def parse_size(text: str) -> tuple[int, int]:
    """A model input size written "HxW" (256x192) -> (H, W), for command-line flags."""
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x192, got {text!r}")
    return int(match.group(1)), int(match.group(2))
