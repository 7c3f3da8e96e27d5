"""Known checkpoints: the manifest, what is present in weights/, and the `weights` commands.

    python app.py weights list               what is known, what is present, verified or not
    python app.py weights fetch NAME         download (resumable), check the hash, convert
    python app.py weights fetch --recommended   the COCO-trained pose + detector for this machine
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ccm.checkpoint import (
    parse_size,
    read_checkpoint,
    save_backbone_weights,
    save_checkpoint,
    sha256_of,
)
from ccm.importers import import_backbone, import_pose_checkpoint
from ccm.model import ARCHS
from ccm.public_layouts import LAYOUTS, POSE_LAYOUTS
from realtime.weights.fetch import Progress, fetch
from realtime.weights.manifest import (
    WEIGHTS_DIR,
    Manifest,
    ManifestEntry,
    load_manifest,
    manifest_path,
)
from realtime.weights.recommended import recommendation
from realtime.weights.verify import (
    VERIFIED,
    converted_status,
    entry_status,
    file_status,
    unlisted_files,
)

logger = logging.getLogger(__name__)


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
    fetching.add_argument("name", nargs="?", help="a name from `weights list`")
    fetching.add_argument(
        "--recommended",
        action="store_true",
        help="instead of NAME: the COCO-trained pose network and person detector for this "
        "machine (a small pose network on a CPU, a large one on a GPU)",
    )
    fetching.add_argument(
        "--machine",
        choices=("cpu", "gpu"),
        help="with --recommended: the machine to choose for (default: this one, gpu when CUDA "
        "is available)",
    )
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
    if (args.name is None) == (not args.recommended):
        raise ValueError("give either a NAME from `weights list` or --recommended")
    if args.machine is not None and not args.recommended:
        raise ValueError("--machine goes with --recommended")
    manifest = _manifest(args)
    if args.recommended:
        chosen = recommendation(args.machine)
        print(f"recommended for this machine ({chosen.machine}): {chosen.why}")
        entries = [manifest.get(name) for name in chosen.names]
    else:
        entries = [manifest.get(args.name)]
    failed = 0
    for entry in entries:
        with _progress_bar(entry) as progress:
            path = fetch(entry, args.weights_dir, trust=args.trust, progress=progress)
        status = entry_status(entry, args.weights_dir)
        detail = f", {status.detail}" if status.detail else ""
        print(f"{entry.name}: {path} ({status.state}{detail})")
        failed += status.state not in (VERIFIED, "unhashed")
    return 1 if failed else 0


@contextmanager
def _progress_bar(entry: ManifestEntry) -> Iterator[Progress]:
    """A tqdm bar of the bytes of `entry`'s download, as a `fetch` progress callback."""
    from tqdm import tqdm

    with tqdm(desc=entry.file, unit="B", unit_scale=True, unit_divisor=1024) as bar:

        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


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
