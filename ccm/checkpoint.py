"""Pose checkpoints: safetensors weights with the config that builds their model inside.

A file is refused, with a message that says why, when it is not safetensors, carries no ccm-pose
config, or holds tensors that do not fit the model its config builds. Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ccm.codec import HeatmapCodec
from ccm.model import HEATMAP_STRIDE, build_model

FORMAT = "ccm-pose/1"


@dataclass(frozen=True)
class PoseConfig:
    """Everything needed to rebuild a pose model and read its heatmaps the way it was trained.

    `unbiased` and `sigma` describe the training targets; `flip_alpha` is the SSP shift (Eq. 22)
    that suits the model's coordinate convention (0 for this project's grids, 0.75 for models
    trained with SimpleBaseline's mapping). `recipe` and `metrics` record how it was trained and
    what it reached (e.g. {"AP": 0.71, "split": "synthetic-val seed 7"}).
    """

    arch: str
    num_keypoints: int = 17
    input_size: tuple[int, int] = (256, 192)
    sigma: float = 2.0
    unbiased: bool = True
    flip_alpha: float = 0.0
    keypoint_set: str = "coco17"
    recipe: str = ""
    metrics: dict[str, float | str] = field(default_factory=dict)

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return (self.input_size[0] // HEATMAP_STRIDE, self.input_size[1] // HEATMAP_STRIDE)

    def build_model(self) -> nn.Module:
        return build_model(self.arch, self.num_keypoints, self.input_size)

    def codec(self, method: str = "parabola", blur_kernel: int = 0) -> HeatmapCodec:
        return HeatmapCodec(
            self.input_size, self.heatmap_size, self.sigma, self.unbiased, method, blur_kernel
        )

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


def save_checkpoint(path: str | Path, model: nn.Module, config: PoseConfig) -> Path:
    """Write the model's weights and `config` to `path` (safetensors), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "config": config.to_json()})
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path, tensors: bool = True) -> tuple[PoseConfig, dict[str, Tensor]]:
    """Config and tensors of a checkpoint, without building a model; `tensors=False` skips them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"{path} carries no ccm-pose config (format {metadata.get('format')!r})")
    return PoseConfig.from_json(metadata["config"]), weights


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
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, PoseConfig]:
    """Rebuild the model a checkpoint describes, load its weights, and return it in eval mode."""
    config, tensors = read_checkpoint(path)
    model = config.build_model()
    check_state_dict(model, tensors, f"{path} ({config.arch})")
    model.load_state_dict(tensors)
    return model.to(device).eval(), config
