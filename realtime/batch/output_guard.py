"""Refuse a batch whose outputs would land on its own inputs, before anything runs.

    refuse_outputs_on_inputs([clip], [OUT / "clip.mp4", OUT / "clip.jsonl"], "--out .")

An output path "is" an input when both name the same file: the same path, a symlink or hard
link to it, or a name that differs only in case on a case-insensitive file system. Comparing
the files the names reach (device and inode) covers all of these at once, whatever the spelling.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from realtime.batch.usage import UsageError


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file `path` reaches (following symlinks), or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_outputs_on_inputs(
    inputs: Sequence[Path], outputs: Iterable[Path], out_flag: str
) -> None:
    """Raise UsageError naming the first output that would replace an input.

    Args:
        inputs: the input files of the batch.
        outputs: every path the batch may write (final, partial and shared files).
        out_flag: how the output folder was given (`--out DIR`), for the message.
    """
    ids: dict[tuple[int, int], Path] = {}
    for path in inputs:
        file_id = _file_id(path)
        if file_id is not None:
            ids.setdefault(file_id, path)
    for output in outputs:
        file_id = _file_id(output)
        source = ids.get(file_id) if file_id is not None else None
        if source is not None:
            raise UsageError(
                f"{out_flag}: the output {output} would replace the input {source}; "
                "choose another --out folder"
            )
