"""The manifest of known checkpoints: `weights/manifest.toml` read and checked into `Manifest`.

`weights/manifest.toml` lists every known checkpoint with its SHA-256 (full, or the 8-hex prefix
its URL publishes), source, licence and AP. `realtime.weights.verify` checks the files in weights/
against it, `realtime.weights.fetch` downloads and converts them, and `realtime.weights.cli` holds
the `python app.py weights ...` commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from ccm.checkpoint import check_hash_spec, hash_matches
from ccm.geometry import HEATMAP_MAPPINGS
from ccm.importers import PublicTraining, guess_training
from ccm.model import ARCHS
from ccm.public_layouts import BACKBONE_LAYOUTS, POSE_LAYOUTS

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
MANIFEST_PATH = WEIGHTS_DIR / "manifest.toml"
KINDS = ("pose", "detector", "backbone")
_KIND_LAYOUTS = {
    "pose": ("ccm", *POSE_LAYOUTS),
    "backbone": BACKBONE_LAYOUTS,
    "detector": ("ultralytics",),
}
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_REQUIRED = ("name", "kind", "arch", "layout", "file", "sha256", "url", "license")


@dataclass(frozen=True)
class ManifestEntry:
    """One known checkpoint (a [[checkpoint]] table of the manifest; its header explains each)."""

    name: str
    kind: str
    arch: str
    layout: str
    file: str
    url: str
    license: str
    sha256: str = ""
    input_size: tuple[int, int] | None = None
    source_ap: float | None = None
    ap_metric: str = ""
    measured_ap: float | None = None
    measured_on: str = ""
    unbiased: bool = True
    flip_alpha: float = 0.0
    sigma: float = 2.0
    heatmap_mapping: str | None = None
    demo: bool = False  # trained on synthetic figures only: ranked below every real checkpoint

    @property
    def converts(self) -> bool:
        """Whether `fetch` converts it into this project's format (public pose layouts)."""
        return self.kind == "pose" and self.layout in POSE_LAYOUTS

    @property
    def local_file(self) -> str:
        """The file the pipeline uses: the converted safetensors, or the file itself."""
        return f"{self.name}.safetensors" if self.converts else self.file

    @property
    def ap(self) -> float | None:
        """Our measured AP when there is one, else the publisher's."""
        return self.measured_ap if self.measured_ap is not None else self.source_ap

    def ap_text(self) -> str:
        if self.measured_ap is not None:
            return f"{self.measured_ap:.3f} ({self.measured_on or 'measured here'})"
        if self.source_ap is not None:
            return f"{self.source_ap:.3f} ({self.ap_metric or 'reported by its publisher'})"
        return "-"

    @property
    def mapping(self) -> str:
        """The heatmap mapping it was trained with: the manifest's, else "pixel-center" for this
        project's files and the one `guess_training` reads from a public file's name."""
        if self.heatmap_mapping is not None:
            return self.heatmap_mapping
        if self.kind == "pose" and self.layout in POSE_LAYOUTS:
            return guess_training(self.file, self.input_size or (256, 192)).heatmap_mapping
        return "pixel-center"

    def training(self) -> PublicTraining:
        return PublicTraining(
            self.unbiased, self.flip_alpha, self.sigma, self.source_ap, self.ap_metric, self.mapping
        )


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: tuple[ManifestEntry, ...]

    def get(self, name: str) -> ManifestEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.entries)
        raise ValueError(f"{name!r} is not in {self.path}; known checkpoints: {known}")

    def for_file(self, file_name: str) -> ManifestEntry | None:
        """The entry whose published or converted file has this name."""
        for entry in self.entries:
            if file_name in (entry.file, entry.local_file):
                return entry
        return None

    def for_hash(self, sha256: str) -> ManifestEntry | None:
        """The entry whose recorded SHA-256 (or prefix) this full hash matches."""
        for entry in self.entries:
            if entry.sha256 and hash_matches(sha256, entry.sha256):
                return entry
        return None


def manifest_path(weights_dir: Path) -> Path:
    """`weights_dir/manifest.toml` when there is one, else the project's manifest."""
    local = weights_dir / "manifest.toml"
    return local if local.is_file() else MANIFEST_PATH


def load_manifest(path: str | Path = MANIFEST_PATH) -> Manifest:
    """Read and check a manifest; a bad entry raises ValueError naming it and what is wrong."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as err:
            raise ValueError(
                "reading the manifest on Python 3.10 needs `pip install tomli`"
            ) from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML ({err})") from err
    tables = data.get("checkpoint", [])
    if not isinstance(tables, list) or set(data) - {"checkpoint"}:
        raise ValueError(f"{path} must hold only [[checkpoint]] tables")
    entries = tuple(_entry(table, path, i) for i, table in enumerate(tables))
    for attr in ("name", "file", "local_file"):
        values = [getattr(e, attr) for e in entries]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{path}: {attr} listed more than once: {', '.join(twice)}")
    return Manifest(path, entries)


def _entry(table: object, path: Path, index: int) -> ManifestEntry:
    where = f"{path}, checkpoint #{index + 1}"
    if not isinstance(table, dict):
        raise ValueError(f"{where} is not a table")
    where = f"{path}, checkpoint {table.get('name', f'#{index + 1}')!r}"
    known = {f.name for f in fields(ManifestEntry)}
    unknown = sorted(set(table) - known)
    missing = [k for k in _REQUIRED if k not in table]
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}")
    values = dict(table)
    for key in ("name", "kind", "arch", "layout", "file", "url", "license", "sha256"):
        if key in values and not isinstance(values[key], str):
            raise ValueError(f"{where}: {key} must be a string")
    for key in ("source_ap", "measured_ap", "flip_alpha", "sigma"):
        if key in values and not isinstance(values[key], int | float):
            raise ValueError(f"{where}: {key} must be a number")
    for key in ("unbiased", "demo"):
        if key in values and not isinstance(values[key], bool):
            raise ValueError(f"{where}: {key} must be true or false")
    if "heatmap_mapping" in values and values["heatmap_mapping"] not in HEATMAP_MAPPINGS:
        raise ValueError(
            f"{where}: heatmap_mapping {values['heatmap_mapping']!r} is not one of "
            f"{', '.join(HEATMAP_MAPPINGS)}"
        )
    if "input_size" in values:
        size = values["input_size"]
        if not (
            isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)
        ):
            raise ValueError(f"{where}: input_size must be [H, W]")
        values["input_size"] = (size[0], size[1])
    if values["sha256"]:
        try:
            values["sha256"] = check_hash_spec(values["sha256"])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
    entry = ManifestEntry(**values)
    if not _NAME.fullmatch(entry.name) or not _NAME.fullmatch(entry.file):
        raise ValueError(f"{where}: name and file must be plain file names")
    if entry.kind not in KINDS:
        raise ValueError(f"{where}: kind {entry.kind!r} is not one of {KINDS}")
    if entry.layout not in _KIND_LAYOUTS[entry.kind]:
        raise ValueError(
            f"{where}: a {entry.kind} checkpoint's layout is one of {_KIND_LAYOUTS[entry.kind]}"
        )
    if entry.kind == "pose" and (entry.arch not in ARCHS or entry.input_size is None):
        raise ValueError(f"{where}: a pose checkpoint needs an arch of ccm.model and input_size")
    return entry
