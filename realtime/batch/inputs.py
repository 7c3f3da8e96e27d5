"""Command-line input arguments -> the files to process, each with an output name of its own.

    found = expand_inputs(["clips/", "extra [1080p].mp4", "more/*.mkv"], VIDEO_SUFFIXES)
    for item in found.files:       # InputFile: path, name ("sub/clip" -> OUT/sub/clip.mp4)
        ...
    for spec, reason in found.unmatched:   # arguments that gave no file: failed inputs
        ...

Rules:

- An argument that is an existing path is taken literally, whatever characters its name holds
  (`clip [1080p].mp4` is a file, not a pattern). Only an argument that is not an existing path
  is a glob pattern (`**` recurses).
- A folder gives the files in it and in its subfolders with a wanted suffix, in natural order
  (img2 before img10), hidden files and folders left out. A file given by name is taken whatever
  its suffix; a pattern keeps the files with a wanted suffix.
- An argument that gives no file is reported in `unmatched` with the reason, never dropped.
- Output names mirror each file's path relative to where it came from: the folder given, the
  fixed leading folders of a pattern, or the common parent of the files named directly. Names
  that still collide are told apart, first by the source suffix (`clip.avi`, `clip.mp4`), then
  by the folder they came from (`a/x`, `b/x`), then by a number (`x-2`). The names depend only
  on the arguments, so a rerun (`--skip-existing`) finds the same ones.
- A file under `exclude` (the output folder) is never an input, so outputs written inside an
  input folder are not processed by the next run.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from realtime.io.images import IMAGE_SUFFIXES, natural_key

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "ExpandedInputs", "InputFile", "expand_inputs"]

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"}
)
_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class InputFile:
    """One file to process.

    Attributes:
        path: the file, as found (relative paths stay relative to the working folder).
        name: its output name, a relative POSIX path with the suffix dropped (videos) or kept
            (images), e.g. "sub/clip"; unique (case-insensitively) within one expansion.
        root: the folder `name` is relative to (before any disambiguation).
    """

    path: Path
    name: str
    root: Path


@dataclass
class ExpandedInputs:
    files: list[InputFile] = field(default_factory=list)
    unmatched: list[tuple[str, str]] = field(default_factory=list)  # (argument, why)


def _walk(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(root) / f
            for f in files
            if not f.startswith(".") and Path(f).suffix.lower() in suffixes
        ]
    return sorted(found, key=natural_key)


def _glob_root(pattern: str) -> Path:
    """The leading folders of a pattern that hold no wildcard ("a/b/*/x.mp4" -> "a/b")."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _MAGIC.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _is_under(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def _common_parent(paths: list[Path]) -> Path:
    if not paths:
        return Path(".")
    parents = [str(p.resolve().parent) for p in paths]
    try:
        return Path(os.path.commonpath(parents))
    except ValueError:  # no common parent (different drives)
        return Path(Path(parents[0]).anchor)


def expand_inputs(
    specs: Iterable[str | Path],
    suffixes: frozenset[str],
    *,
    keep_suffix: bool = False,
    exclude: Path | None = None,
    kind: str = "video",
) -> ExpandedInputs:
    """Files, folders and glob patterns -> the input files in order, each once, with unique
    output names (see the module docstring).

    Args:
        specs: command-line arguments.
        suffixes: lower-case suffixes wanted from folders and patterns.
        keep_suffix: keep the file suffix in `InputFile.name` (images) instead of dropping it.
        exclude: a folder whose files are never inputs (the output folder).
        kind: what a file is called in messages ("video", "image").
    """
    exclude = exclude.resolve() if exclude is not None else None
    wanted = ", ".join(sorted(suffixes))
    result = ExpandedInputs()
    found: list[tuple[Path, Path | None]] = []  # (file, its root; None = named directly)
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if path.is_dir():
            files = [f for f in _walk(path, suffixes) if not _is_under(f, exclude)]
            if not files:
                result.unmatched.append((text, f"no {kind} files ({wanted}) in this folder"))
            found += [(f, path) for f in files]
        elif path.exists():
            found.append((path, None))
        elif _MAGIC.search(text):
            matches = [Path(m) for m in glob.glob(text, recursive=True)]
            files = []
            for match in sorted(matches, key=natural_key):
                if match.is_dir():
                    files += [(f, match) for f in _walk(match, suffixes)]
                elif match.suffix.lower() in suffixes:
                    files.append((match, _glob_root(text)))
            files = [(f, r) for f, r in files if not _is_under(f, exclude)]
            if not files:
                why = (
                    f"the pattern matches no {kind} file ({wanted})"
                    if matches
                    else "no such file, and no file matches it as a pattern"
                )
                result.unmatched.append((text, why))
            found += files
        else:
            result.unmatched.append((text, "no such file or folder"))

    seen: set[Path] = set()
    unique: list[tuple[Path, Path | None]] = []
    for file, root in found:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((file, root))
    named_root = _common_parent([f for f, r in unique if r is None])
    roots = [r if r is not None else named_root for _, r in unique]
    names = _unique_names([f for f, _ in unique], roots, keep_suffix)
    result.files = [InputFile(f, n, r) for (f, _), n, r in zip(unique, names, roots, strict=True)]
    return result


def _relative(file: Path, root: Path, keep_suffix: bool) -> PurePosixPath:
    try:
        rel = file.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(file.name)
    rel = PurePosixPath(rel.as_posix())
    return rel if keep_suffix else rel.with_name(rel.stem)


def _unique_names(files: list[Path], roots: list[Path], keep_suffix: bool) -> list[str]:
    names = [_relative(f, r, keep_suffix) for f, r in zip(files, roots, strict=True)]

    def collisions() -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(str(name).casefold(), []).append(i)
        return [g for g in groups.values() if len(g) > 1]

    def add_suffixes() -> None:  # clip.avi and clip.mp4
        for group in collisions():
            suffixes = {files[i].suffix.casefold() for i in group}
            if not keep_suffix and len(suffixes) > 1:  # x.mkv, X.MP4, x.mp4: keep each one's
                for i in group:
                    names[i] = names[i].with_name(names[i].name + files[i].suffix)

    add_suffixes()
    for group in collisions():  # a/x and b/x: the folder each came from
        for i in group:
            if roots[i].resolve().name:
                names[i] = PurePosixPath(roots[i].resolve().name) / names[i]
    add_suffixes()
    # Whatever is left gets a number (the first keeps its name).
    taken = {str(n).casefold() for n in names}
    for group in collisions():
        for i in group[1:]:
            stem, suffix = (names[i].stem, names[i].suffix) if keep_suffix else (names[i].name, "")
            n = 2
            while (candidate := names[i].with_name(f"{stem}-{n}{suffix}")) and (
                str(candidate).casefold() in taken
            ):
                n += 1
            names[i] = candidate
            taken.add(str(candidate).casefold())
    return [str(n) for n in names]
