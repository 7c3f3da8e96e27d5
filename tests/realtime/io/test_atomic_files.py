"""The stale temp-file sweep deletes only the temporary files of the outputs a run writes, and
`close_together` commits an input's outputs together or not at all."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from realtime.io.atomic_files import close_together, remove_stale_parts
from realtime.io.sinks import JsonlWriter


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_the_sweep_touches_only_the_names_this_run_writes(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    owner = f"{_dead_pid()}@{socket.gethostname()}"
    ours = [out / f".clip.mp4.{owner}.0123abcd.part", out / "sub" / ".x.jsonl.89abcdef.part"]
    theirs = [
        out / f".notes.txt.{owner}.0123abcd.part",  # same pattern, written by something else
        out / "sub" / f".clip.mp4.{owner}.0123abcd.part",  # another folder's clip.mp4
        out / "other" / ".x.jsonl.89abcdef.part",
    ]
    (out / "other").mkdir()
    for path in ours + theirs:
        path.write_bytes(b"x")
    outputs = [out / "clip.mp4", out / "clip.jsonl", out / "sub" / "x.jsonl", out / "no" / "y"]
    assert sorted(remove_stale_parts(out, outputs)) == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


def test_close_together_commits_all_or_nothing(tmp_path):
    a, b = JsonlWriter(tmp_path / "a.jsonl"), JsonlWriter(tmp_path / "b.jsonl")
    a._fh.write("a\n")

    def fail() -> None:
        raise OSError(28, "No space left on device")

    b._finish = fail
    with pytest.raises(OSError, match="No space left"):
        close_together(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    c, d = JsonlWriter(tmp_path / "c.jsonl"), JsonlWriter(tmp_path / "d.jsonl")
    close_together(c, d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "d.jsonl"]
