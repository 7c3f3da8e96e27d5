"""Files written whole or not at all: a hidden temporary sibling renamed into place on commit.

The temporary name (`.clip.mp4.<pid>@<host>.<tag>.part`) records the process that writes it, so
`remove_stale_parts` can delete what a killed run left behind without touching the files of a
run still going (another rank of the same job, say). The writers of `realtime.io.sinks` use it.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Protocol, TypeVar

log = logging.getLogger(__name__)

# `.NAME.PID@HOST.TAG.part`, and the `.NAME.TAG.part` of earlier versions (no owner recorded).
_PART = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)@(?P<host>[^/@]+)\.)?[0-9a-f]{8}\.part$")
_HOST = socket.gethostname().replace("@", "_").replace("/", "_") or "localhost"


def owner_tag() -> str:
    """How this process signs its temporary files: `PID@HOST`."""
    return f"{os.getpid()}@{_HOST}"


class AtomicPath:
    """A temporary sibling of `final` that becomes `final` on commit (same folder, same disk)."""

    def __init__(self, final: str | Path) -> None:
        self.final = Path(final)
        if not self.final.parent.is_dir():
            raise FileNotFoundError(f"output folder does not exist: {self.final.parent}")
        if self.final.is_dir():
            raise IsADirectoryError(f"output path is a folder: {self.final}")
        owner = owner_tag()
        self.temp = self.final.with_name(f".{self.final.name}.{owner}.{uuid.uuid4().hex[:8]}.part")

    def commit(self) -> None:
        os.replace(self.temp, self.final)

    def retarget(self, final: str | Path) -> Path:
        """Commit under `final` instead, a name in the same folder."""
        final = Path(final)
        if final.parent.resolve() != self.final.parent.resolve():
            raise ValueError(f"{final}: not in the folder of {self.final}")
        self.final = final
        return final

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)

    def write(self, fill: Callable[[IO], object], text: bool = False) -> Path:
        """The whole file through `fill(fh)`, then committed; nothing left when `fill` raises."""
        try:
            with open(self.temp, "x", encoding="utf-8") if text else open(self.temp, "xb") as fh:
                fill(fh)
            self.commit()
        except BaseException:
            self.discard()
            raise
        return self.final


class StagedOutput(Protocol):
    """A writer whose output is finished in a temporary file before it is renamed into place
    (the writers of `realtime.io.sinks`)."""

    path: Path

    def finish(self) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def close_together(*writers: StagedOutput) -> None:
    """Finish every writer's temporary file, then rename them all into place: the outputs of
    one input are committed together or not at all. On failure every temporary file (and any
    output this call already renamed) is deleted, and the error raised."""
    try:
        for writer in writers:
            writer.finish()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    done: list[Path] = []
    try:
        for writer in writers:
            writer.commit()
            done.append(writer.path)
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        for writer in writers:
            writer.abort()
        raise


def full_disk_message(err: BaseException, folder: Path) -> str | None:
    """One line naming the full file system when `err` (or an error it came from) is "no space
    left" or "quota exceeded"; None for any other error."""
    seen: BaseException | None = err
    while seen is not None and getattr(seen, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    mount = Path(os.path.abspath(folder))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        stat = os.statvfs(folder)
        kib = stat.f_frsize / 1024
        free = f"{stat.f_bavail * kib:.0f} KiB free of {stat.f_blocks * kib:.0f} KiB"
    except OSError:
        free = "free space unknown"
    what = "quota exceeded" if seen.errno == errno.EDQUOT else "no space left"
    return f"{what} on the file system mounted at {mount} (holding {folder}; {free})"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_parts_of(final: str | Path, owner: str) -> list[Path]:
    """Delete the temporary files for `final` that the process `owner` (`owner_tag()` there:
    `PID@HOST`, on any host sharing the folder) left when it died. Returns the paths removed."""
    final = Path(final)
    removed = []
    for path in final.parent.glob(f".{glob.escape(final.name)}.{glob.escape(owner)}.*.part"):
        if _PART.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_stale_parts(folder: str | Path, outputs: Iterable[Path] | None = None) -> list[Path]:
    """Delete the temporary files that killed runs left in `folder` and its subfolders.

    A temporary file is stale when the process that wrote it, on this host, no longer runs
    (or its name records no owner). Files of live processes and of other hosts sharing the
    folder are kept. With `outputs` (the final paths a run writes) only the temporary files of
    those names are candidates, so a file of the same pattern that something else put there is
    left alone. Returns the paths removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    wanted: dict[str, set[str]] | None = None
    if outputs is not None:
        wanted = {}
        for output in outputs:
            wanted.setdefault(os.path.abspath(output.parent), set()).add(output.name)
    walk = os.walk(folder) if wanted is None else _listed(wanted)
    for root, _dirs, files in walk:
        names = None if wanted is None else wanted.get(os.path.abspath(root), set())
        for name in files:
            match = _PART.match(name)
            if match is None or (names is not None and match.group("name") not in names):
                continue
            pid, host = match.group("pid"), match.group("host")
            if pid is not None and (host != _HOST or _process_alive(int(pid))):
                continue
            path = Path(root) / name
            try:
                path.unlink()
            except FileNotFoundError:  # another process cleaned it first
                continue
            removed.append(path)
    if removed:
        log.info("removed %d unfinished file(s) of earlier runs in %s", len(removed), folder)
    return removed


def _listed(folders: dict[str, set[str]]) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk`'s rows for just these folders (those that exist), not their subfolders."""
    for folder in folders:
        try:
            yield folder, [], os.listdir(folder)
        except OSError:
            continue


_Self = TypeVar("_Self", bound="WholeOrNothing")


class WholeOrNothing:
    """A writer used in `with`: `close()` (everything written, under the final names) when the
    block ends normally, `abort()` (nothing left behind) when it raises."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
