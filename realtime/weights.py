"""Known checkpoints: the manifest, what is present in weights/, and the `weights` commands.

    python app.py weights list               what is known, what is present, verified or not
    python app.py weights fetch NAME         download (resumable), check the hash, convert
    python app.py weights import FILE --from mmpose|hrnet|torchvision|timm [--arch A] ...
    python app.py weights verify             hash every present file against the manifest

`weights/manifest.toml` lists every known checkpoint with its SHA-256 (full, or the 8-hex prefix
its URL publishes), source, licence and AP. `fetch` is the only code here that touches the
network. Public pose files are converted once to safetensors that record the SHA-256 of the file
they came from, so they are verified through it. `best_present(kind)` picks the present, verified
checkpoint of a kind with the highest AP; the pipeline uses it when no file is named.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from ccm.checkpoint import (
    check_hash_spec,
    check_state_dict,
    hash_matches,
    read_checkpoint,
    read_source,
    save_backbone_weights,
    save_checkpoint,
    sha256_of,
)
from ccm.geometry import HEATMAP_MAPPINGS
from ccm.importers import (
    BACKBONE_LAYOUTS,
    LAYOUTS,
    POSE_LAYOUTS,
    PublicTraining,
    guess_training,
    import_backbone,
    import_pose_checkpoint,
)
from ccm.model import ARCHS

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
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

Progress = Callable[[int, "int | None"], None]


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


# ---- what is present ---------------------------------------------------------------------------

VERIFIED = "verified"


@dataclass(frozen=True)
class EntryStatus:
    """What `weights_dir` holds for one manifest entry.

    state: "verified" (usable), "not converted" (the public file is there and verified, its
    conversion is not), "unhashed" (the manifest has no hash to check it against), "mismatch"
    (its SHA-256 differs), "invalid" (unreadable, or not the model listed) or "absent".
    `path` is the file the state is about; `sha256` its full hash when it was computed.
    """

    entry: ManifestEntry
    state: str
    path: Path | None = None
    sha256: str = ""
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.state == VERIFIED


def file_status(entry: ManifestEntry, path: Path, deep: bool = False) -> EntryStatus:
    """Hash `path` (the entry's published file) against the manifest.

    `deep` also checks a ccm-pose checkpoint's tensors against its config.
    """
    actual = sha256_of(path)
    if not entry.sha256:
        return EntryStatus(entry, "unhashed", path, actual, "the manifest lists no SHA-256")
    if not hash_matches(actual, entry.sha256):
        return EntryStatus(entry, "mismatch", path, actual, f"the manifest lists {entry.sha256}")
    status = EntryStatus(entry, VERIFIED, path, actual)
    return _check_tensors(status) if deep and entry.layout == "ccm" else status


def converted_status(entry: ManifestEntry, path: Path, deep: bool = False) -> EntryStatus:
    """Check a converted checkpoint through the SHA-256 of the file it records coming from.

    Its own bytes have no published hash; being safetensors, they run no code, and a corrupted
    file fails to load. `deep` also hashes it (to show) and checks its tensors against its config.
    """
    try:
        source = read_source(path)
        config, _ = read_checkpoint(path, tensors=False)
    except ValueError as err:
        return EntryStatus(entry, "invalid", path, detail=str(err))
    recorded = source.get("sha256", "")
    own = sha256_of(path) if deep else ""
    if not entry.sha256:
        return EntryStatus(entry, "unhashed", path, own, "the manifest lists no SHA-256")
    if not recorded or not hash_matches(recorded, entry.sha256):
        return EntryStatus(
            entry,
            "mismatch",
            path,
            own,
            f"converted from a file with SHA-256 {recorded or 'unknown'}, the manifest lists "
            f"{entry.sha256}",
        )
    if (config.arch, config.input_size) != (entry.arch, entry.input_size):
        return EntryStatus(
            entry,
            "invalid",
            path,
            own,
            f"holds {config.arch} at {config.input_size}, the manifest lists {entry.arch} at "
            f"{entry.input_size}",
        )
    if config.heatmap_mapping != entry.mapping:
        # A conversion older than the field reads as "pixel-center": every keypoint 1.5 crop
        # pixels off. `weights fetch` converts it again from the verified public file.
        return EntryStatus(
            entry,
            "invalid",
            path,
            own,
            f"converted with heatmap mapping {config.heatmap_mapping!r}, the manifest lists "
            f"{entry.mapping!r}; `weights fetch {entry.name}` converts it again",
        )
    status = EntryStatus(
        entry, VERIFIED, path, own, f"converted from {source.get('file', '?')} {recorded[:8]}"
    )
    return _check_tensors(status) if deep else status


def _check_tensors(status: EntryStatus) -> EntryStatus:
    """Build the model a checkpoint's config describes and check its tensors fit."""
    assert status.path is not None
    try:
        config, tensors = read_checkpoint(status.path)
        check_state_dict(config.build_model(), tensors, str(status.path))
    except ValueError as err:
        return EntryStatus(status.entry, "invalid", status.path, status.sha256, str(err))
    return status


def entry_status(entry: ManifestEntry, weights_dir: Path, deep: bool = False) -> EntryStatus:
    """What `weights_dir` holds for `entry`: its usable file verified, or why not."""
    if entry.converts and (weights_dir / entry.local_file).is_file():
        return converted_status(entry, weights_dir / entry.local_file, deep)
    path = weights_dir / entry.file
    if not path.is_file():
        return EntryStatus(entry, "absent")
    status = file_status(entry, path, deep)
    if status.usable and entry.converts:
        return EntryStatus(
            entry, "not converted", path, status.sha256, f"`weights fetch {entry.name}` converts it"
        )
    return status


def unlisted_files(weights_dir: Path, manifest: Manifest) -> list[Path]:
    """Weight files at the top of `weights_dir` that no manifest entry names."""
    if not weights_dir.is_dir():
        return []
    return sorted(
        p
        for p in weights_dir.iterdir()
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and manifest.for_file(p.name) is None
    )


def best_present(
    kind: str, weights_dir: Path = WEIGHTS_DIR, manifest: Manifest | None = None
) -> EntryStatus | None:
    """The present, verified checkpoint of `kind` with the highest AP, or None. Demo weights
    (trained on synthetic figures; their AP is on synthetic data) come after every real one.

    Candidates are tried from the best down, so only the files needed are hashed.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    manifest = manifest or load_manifest(manifest_path(weights_dir))
    candidates = sorted(
        (e for e in manifest.entries if e.kind == kind),
        key=lambda e: (not e.demo, -1.0 if e.ap is None else e.ap),
        reverse=True,
    )
    for entry in candidates:
        status = entry_status(entry, weights_dir)
        if status.usable:
            return status
        if status.state in ("mismatch", "invalid"):
            logger.warning("not using %s: %s (%s)", status.path, status.state, status.detail)
        elif status.state != "absent":
            logger.info("not using %s: %s (%s)", status.path, status.state, status.detail)
    return None


def select_pose_checkpoint(weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The pose checkpoint to use when none is named, logged with why it was chosen.

    The best verified manifest checkpoint; failing that, the unlisted ccm-pose checkpoint in
    `weights_dir` with the best AP in its metrics (a local training run), with a warning that it
    is not verified (safetensors run no code, so that is safe to load).
    """
    manifest = load_manifest(manifest_path(weights_dir))
    best = best_present("pose", weights_dir, manifest)
    if best is not None and best.path is not None:
        logger.info(
            "pose checkpoint: %s (%s, %s, AP %s; verified)",
            best.path,
            best.entry.name,
            best.entry.arch,
            best.entry.ap_text(),
        )
        _warn_if_demo(best.entry)
        return best.path
    ranked = []
    for path in unlisted_files(weights_dir, manifest):
        if path.suffix != ".safetensors":
            continue
        try:
            config, _ = read_checkpoint(path, tensors=False)
        except ValueError as err:
            logger.debug("skipping %s: %s", path, err)
            continue
        ap = config.metrics.get("AP")
        if isinstance(ap, int | float):
            ranked.append((float(ap), path, config))
        else:
            logger.info("skipping %s: no AP in its metrics; name it with --pose to use it", path)
    if ranked:
        ap, path, config = max(ranked, key=lambda r: r[0])
        logger.warning(
            "pose checkpoint: %s (%s, AP %.3f); it is not in the manifest, so not verified",
            path,
            config.arch,
            ap,
        )
        return path
    raise FileNotFoundError(
        f"no usable pose checkpoint in {weights_dir}: fetch one (`python app.py weights list`, "
        "then `weights fetch NAME`), import one (`weights import FILE --from mmpose`), "
        "or pass --pose FILE"
    )


def select_detector_weights(weights_dir: Path = WEIGHTS_DIR) -> Path:
    """The YOLO weights to use when none are named: the best verified manifest detector.

    Ultralytics unpickles its weight files in full, so an unverified one is never picked
    implicitly; name it with --detector to use it.
    """
    best = best_present("detector", weights_dir)
    if best is None or best.path is None:
        raise FileNotFoundError(
            f"no verified detector weights in {weights_dir}: `python app.py weights fetch "
            "yolo11n`, or pass --detector FILE (YOLO weights you trust)"
        )
    logger.info(
        "person detector: %s (%s, AP %s; verified)",
        best.path,
        best.entry.name,
        best.entry.ap_text(),
    )
    _warn_if_demo(best.entry)
    return best.path


def _warn_if_demo(entry: ManifestEntry) -> None:
    if entry.demo:
        logger.warning(
            "%s are demo weights, trained on synthetic figures only: expect poor results on real "
            "footage (`python app.py weights list` shows the COCO checkpoints to fetch)",
            entry.name,
        )


# ---- fetching ----------------------------------------------------------------------------------


def download(url: str, part: Path, progress: Progress | None = None, timeout: float = 60.0) -> int:
    """Download `url` into `part`, resuming from what `part` already holds; returns its size.

    Resumes with an HTTP Range request; a server that answers with the whole file (200) starts
    the file over. An interrupted transfer keeps what arrived, so the same call resumes it.
    `progress(done, total)` is called as bytes arrive (total None when unknown).
    """
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"only http(s) URLs are fetched, got {url!r}")
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "ccm-pose"} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the hash check decides
            return have
        raise ValueError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise ValueError(f"cannot reach {url}: {getattr(err, 'reason', err)}") from err
    with response:
        resumed = have > 0 and response.status == 206
        if resumed and _range_start(response.headers.get("Content-Range", "")) != have:
            raise ValueError(f"{url} resumed at the wrong offset; delete {part} and fetch again")
        done = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else None
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                if progress:
                    progress(done, total)
                while chunk := response.read(1 << 16):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except OSError as err:
            raise ValueError(
                f"downloading {url} stopped at {done} bytes ({err}); fetch again to resume"
            ) from err
    if total is not None and done != total:
        raise ValueError(f"downloading {url} stopped at {done} of {total} bytes; fetch again")
    return done


def _range_start(content_range: str) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(match.group(1)) if match else None


def fetch(
    entry: ManifestEntry,
    weights_dir: Path = WEIGHTS_DIR,
    *,
    trust: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Download `entry` into `weights_dir`, check its SHA-256, convert a public pose file.

    An entry with no hash in the manifest is fetched only with `trust`. A download whose hash
    differs is deleted and refused. Returns the file the pipeline uses.
    """
    if not entry.sha256 and not trust:
        raise ValueError(
            f"the manifest lists no SHA-256 for {entry.name}, so its download cannot be "
            "verified; pass --trust to fetch it anyway (its hash is printed, to record)"
        )
    if entry.converts and (weights_dir / entry.local_file).is_file():
        status = converted_status(entry, weights_dir / entry.local_file)
        if status.usable:
            logger.info("%s is already present and verified", status.path)
            return weights_dir / entry.local_file
    dest = weights_dir / entry.file
    if dest.is_file():
        status = file_status(entry, dest)
        if status.state == "mismatch":
            raise ValueError(
                f"{dest} exists with SHA-256 {status.sha256}, but {status.detail}; delete it "
                "and fetch again"
            )
        logger.info("%s is already present", dest)
    elif not entry.url:
        raise ValueError(f"{entry.name} has no URL in the manifest; put {dest.name} there by hand")
    else:
        part = dest.with_name(dest.name + ".part")
        download(entry.url, part, progress)
        actual = sha256_of(part)
        if entry.sha256 and not hash_matches(actual, entry.sha256):
            part.unlink()
            raise ValueError(
                f"the download of {entry.name} has SHA-256 {actual}, but the manifest lists "
                f"{entry.sha256}; it was deleted. The file changed upstream or was corrupted."
            )
        os.replace(part, dest)
        if not entry.sha256:
            logger.warning("%s is not verified; its SHA-256 is %s", dest, actual)
    if entry.converts:
        return convert_entry(entry, weights_dir, trust=trust)
    return dest


def convert_entry(entry: ManifestEntry, weights_dir: Path, *, trust: bool = False) -> Path:
    """Convert a fetched public pose file to `weights_dir/NAME.safetensors`."""
    assert entry.converts and entry.input_size is not None
    imported = import_pose_checkpoint(
        weights_dir / entry.file,
        entry.layout,
        arch=entry.arch,
        input_size=entry.input_size,
        training=entry.training(),
        expected_sha256=entry.sha256 or None,
        trust=trust,
    )
    source = imported.source | {"manifest": entry.name, "url": entry.url}
    out = save_checkpoint(weights_dir / entry.local_file, imported.model, imported.config, source)
    logger.info("converted %s -> %s (%s)", entry.file, out, imported.report.summary())
    return out


# ---- the `weights` commands ----------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x192, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def add_weights_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `weights list|fetch|import|verify`; each sets `run` returning an exit code."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--weights-dir", type=Path, default=WEIGHTS_DIR, help="folder of weights (default weights/)"
    )
    common.add_argument(
        "--manifest",
        type=Path,
        help="manifest to use (default: WEIGHTS_DIR/manifest.toml, else the project's)",
    )
    weights = subparsers.add_parser(
        "weights",
        help="list, fetch, import and verify checkpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = weights.add_subparsers(dest="weights_command", required=True)

    listing = actions.add_parser(
        "list", parents=[common], help="known checkpoints, and which are present and verified"
    )
    listing.set_defaults(run=run_list)

    fetching = actions.add_parser(
        "fetch", parents=[common], help="download a listed checkpoint, check it, convert it"
    )
    fetching.add_argument("name", help="a name from `weights list`")
    fetching.add_argument(
        "--trust", action="store_true", help="accept a file the manifest has no SHA-256 for"
    )
    fetching.set_defaults(run=run_fetch)

    importing = actions.add_parser(
        "import",
        parents=[common],
        help="convert a local public checkpoint to this project's format",
        description="mmpose / hrnet files become pose checkpoints (.safetensors with their "
        "config); with --arch of another head on the same backbone (e.g. ccm_hrnet_w32 from an "
        "HRNet-W32 file) the backbone is kept and the heads start fresh, for `python -m train "
        "--init`. torchvision / timm ImageNet files become backbone weights for "
        "`python -m train --backbone-weights`.",
    )
    importing.add_argument("file", type=Path, help="the .pth / .pt file")
    importing.add_argument(
        "--from", dest="layout", choices=LAYOUTS, required=True, help="the file's key layout"
    )
    importing.add_argument("--arch", choices=tuple(ARCHS), help="target arch (default: the file's)")
    importing.add_argument(
        "--input-size", type=parse_size, help="HxW the model was trained at (default 256x192)"
    )
    importing.add_argument(
        "--trust",
        action="store_true",
        help="unpickle the file in full even though the manifest does not list its hash",
    )
    importing.add_argument("--out", type=Path, help="output file (default: in WEIGHTS_DIR)")
    importing.set_defaults(run=run_import)

    verifying = actions.add_parser(
        "verify", parents=[common], help="hash every present file against the manifest"
    )
    verifying.set_defaults(run=run_verify)


def _manifest(args: argparse.Namespace) -> Manifest:
    return load_manifest(args.manifest or manifest_path(args.weights_dir))


def run_list(args: argparse.Namespace) -> int:
    manifest = _manifest(args)
    rows = [("NAME", "KIND", "ARCH", "INPUT", "AP", "STATUS", "FILE")]
    for entry in manifest.entries:
        status = entry_status(entry, args.weights_dir)
        size = "x".join(map(str, entry.input_size)) if entry.input_size else "-"
        ap = "-" if entry.ap is None else f"{entry.ap:.3f}"
        ap += "*" if entry.measured_ap is not None else ""
        name = entry.name + (" (demo)" if entry.demo else "")
        file = status.path.name if status.path else entry.file
        rows.append((name, entry.kind, entry.arch, size, ap, status.state, file))
    print(_table(rows))
    print("AP: as its publisher reports it (ap_metric in the manifest); * measured here")
    print("(demo): trained on synthetic figures only, used when nothing else is present")
    unlisted = unlisted_files(args.weights_dir, manifest)
    if unlisted:
        print(f"\nnot in the manifest ({len(unlisted)}), so not verified:")
        for path in unlisted:
            print(f"  {path.name}  {_describe(path)}")
    return 0


def _describe(path: Path) -> str:
    if path.suffix != ".safetensors":
        return "(a pickle: used only when named explicitly)"
    try:
        config, _ = read_checkpoint(path, tensors=False)
    except ValueError:
        return "(not a ccm-pose checkpoint)"
    ap = config.metrics.get("AP")
    mapping = config.heatmap_mapping
    return (
        f"{config.arch} {config.input_size[0]}x{config.input_size[1]}"
        + (f", AP {ap}" if ap is not None else ", no AP")
        + (f", {mapping} heatmaps" if mapping != "pixel-center" else "")
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def run_fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    entry = _manifest(args).get(args.name)
    with tqdm(desc=entry.file, unit="B", unit_scale=True, unit_divisor=1024) as bar:

        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        path = fetch(entry, args.weights_dir, trust=args.trust, progress=progress)
    status = entry_status(entry, args.weights_dir)
    print(f"{entry.name}: {path} ({status.state}{', ' + status.detail if status.detail else ''})")
    return 0 if status.state in (VERIFIED, "unhashed") else 1


def run_import(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    manifest = _manifest(args)
    actual = sha256_of(path)
    entry = manifest.for_hash(actual)
    named = manifest.for_file(path.name)
    if entry is None and named is not None and named.sha256:
        raise ValueError(
            f"{path.name} is listed as {named.name} with SHA-256 {named.sha256}, but this file "
            f"has {actual}: it is corrupted or a different file"
        )
    if entry is not None and entry.layout != args.layout:
        raise ValueError(f"{path} is {entry.name}, a {entry.layout} file, not {args.layout}")
    expected = entry.sha256 if entry is not None else None
    if entry is not None:
        logger.info("%s is %s in the manifest (SHA-256 verified)", path, entry.name)
    if args.layout in POSE_LAYOUTS:
        return _import_pose(args, path, entry, expected)
    imported = import_backbone(
        path, args.layout, arch=args.arch, expected_sha256=expected, trust=args.trust
    )
    out = args.out or args.weights_dir / "backbones" / f"{path.stem}.safetensors"
    save_backbone_weights(out, imported.tensors, imported.backbone, imported.source)
    arch = args.arch or next(a for a in ARCHS if a.endswith(imported.backbone))
    print(f"{path.name} -> {out} ({imported.backbone} backbone weights)")
    print(f"  {imported.report.summary()}")
    print(f"  train with: python -m train --arch {arch} --backbone-weights {out} ...")
    return 0


def _import_pose(
    args: argparse.Namespace, path: Path, entry: ManifestEntry | None, expected: str | None
) -> int:
    pose_entry = entry if entry is not None and entry.kind == "pose" else None
    input_size = args.input_size or (pose_entry.input_size if pose_entry else None) or (256, 192)
    imported = import_pose_checkpoint(
        path,
        args.layout,
        arch=args.arch,
        input_size=input_size,
        training=pose_entry.training() if pose_entry else None,
        expected_sha256=expected,
        trust=args.trust,
    )
    config = imported.config
    whole = ARCHS[config.arch].head == ARCHS[imported.source_arch].head
    if args.out is not None:
        out = args.out
    elif not whole:
        out = args.weights_dir / "init" / f"{path.stem}_{config.arch}.safetensors"
    elif pose_entry is not None and config.input_size == pose_entry.input_size:
        out = args.weights_dir / pose_entry.local_file
    else:
        out = args.weights_dir / f"{path.stem}.safetensors"
    source = imported.source | ({"manifest": entry.name} if entry is not None else {})
    save_checkpoint(out, imported.model, config, source)
    size = f"{config.input_size[0]}x{config.input_size[1]}"
    print(f"{path.name} ({imported.source_arch}) -> {out} ({config.arch}, {size})")
    print(f"  {imported.report.summary()}")
    if whole:
        print(
            f"  unbiased={config.unbiased}, flip_alpha={config.flip_alpha}, sigma={config.sigma}, "
            f"heatmap_mapping={config.heatmap_mapping}"
        )
    else:
        print(f"  train it with: python -m train --init {out} ...")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    manifest = _manifest(args)
    rows = [("STATUS", "NAME", "FILE", "SHA-256", "DETAIL")]
    failed = 0
    for entry in manifest.entries:
        statuses = []
        if entry.converts and (args.weights_dir / entry.local_file).is_file():
            statuses.append(converted_status(entry, args.weights_dir / entry.local_file, True))
        if (args.weights_dir / entry.file).is_file():
            statuses.append(file_status(entry, args.weights_dir / entry.file, deep=True))
        for status in statuses:
            assert status.path is not None
            failed += status.state in ("mismatch", "invalid")
            detail = status.detail
            if status.usable and len(entry.sha256) < 64 and status.path.name == entry.file:
                detail = "the manifest has a prefix only; record this full hash"
            rows.append((status.state, entry.name, status.path.name, status.sha256, detail))
    for path in unlisted_files(args.weights_dir, manifest):
        rows.append(("unlisted", "-", path.name, sha256_of(path), _describe(path)))
    if len(rows) == 1:
        print(f"no weight files in {args.weights_dir}")
        return 0
    print(_table(rows))
    if failed:
        print(f"\n{failed} file(s) failed verification")
    return 1 if failed else 0
