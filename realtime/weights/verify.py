"""What weights/ holds for each manifest entry, verified or not, and the checkpoints picked
when none is named.

Public pose files are converted once to safetensors that record the SHA-256 of the file they
came from, so they are verified through it. `best_present(kind)` picks the present, verified
checkpoint of a kind with the highest AP; the pipeline uses it when no file is named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ccm.checkpoint import check_state_dict, hash_matches, read_checkpoint, read_source, sha256_of
from realtime.weights.manifest import (
    KINDS,
    WEIGHTS_DIR,
    Manifest,
    ManifestEntry,
    load_manifest,
    manifest_path,
)

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")

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
    return best.path


_SAFE_MODEL_SUFFIXES = (".yaml", ".yml")  # a model definition: parsed, never unpickled


class UntrustedWeightsError(ValueError):
    """A weights file that would be unpickled, with no known hash and no `--trust`."""


def check_weights_trusted(path: str | Path, trust: bool, manifest: Manifest | None = None) -> str:
    """Allow a file that ultralytics loads (and so unpickles in full) only when it is safe to.

    A model .yaml is parsed, not unpickled, and always allowed. Any other file must have the
    full SHA-256 of a manifest entry (an 8-hex prefix stops a corrupted file, not a crafted
    one), or the caller must trust it. Returns why it is allowed, for the log; raises
    UntrustedWeightsError saying what to do otherwise.
    """
    path = Path(path)
    if path.suffix.lower() in _SAFE_MODEL_SUFFIXES:
        return "a model definition (.yaml), built with random weights"
    actual = sha256_of(path)
    manifest = manifest or load_manifest()
    entry = manifest.for_hash(actual)
    if entry is not None and len(entry.sha256) == len(actual):
        return f"its SHA-256 is {entry.name}'s in the manifest"
    if trust:
        logger.warning("loading %s (SHA-256 %s), not in the manifest: trusted (--trust)", path,
                       actual)  # fmt: skip
        return "trusted (--trust)"
    raise UntrustedWeightsError(
        f"{path}: loading it unpickles it, which runs any code it holds, and its SHA-256 "
        f"{actual[:16]}... is not in the manifest; pass --trust if you trust where it came from "
        "(or list its full hash in weights/manifest.toml)"
    )
