"""What a batch says: one line per input, the failures at the end, and errors in one line."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tqdm import tqdm

_PLAIN_ERRORS = (ValueError, RuntimeError, OSError)  # their message says it all


def say(line: str) -> None:
    """One line on stdout, above the progress bars, at once (also into a pipe, under torchrun)."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def describe(err: BaseException, source: Path | str | None = None) -> str:
    """An error in one line for a person: its first line, without `source: ` in front (the
    caller names the input) or ultralytics' "ERROR" prefix, and with the error's type unless it
    is a plain ValueError, RuntimeError or OSError."""
    text = str(err).strip()
    text = text.splitlines()[0] if text else ""
    if source is not None:
        text = text.removeprefix(f"{source}: ")
    text = re.sub(r"^ERROR\W*", "", text)
    if isinstance(err, _PLAIN_ERRORS) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def failed_summary(failed: list[str], total: int, shown: int = 5) -> str:
    names = ", ".join(failed[:shown])
    more = f" and {len(failed) - shown} more" if len(failed) > shown else ""
    return f"{len(failed)} of {total} inputs failed: {names}{more}"


def file_size(path: Path) -> int:
    """Bytes of `path`, 0 when it cannot be read (how work is balanced and ordered)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
