"""Download a manifest checkpoint (resumable), check its SHA-256, convert a public pose file.

`fetch` is the only code in the project that touches the network, and it runs only on an explicit
`python app.py weights fetch NAME`.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ccm.checkpoint import hash_matches, save_checkpoint, sha256_of
from ccm.importers import import_pose_checkpoint
from realtime.weights.manifest import WEIGHTS_DIR, ManifestEntry
from realtime.weights.verify import converted_status, file_status

logger = logging.getLogger(__name__)

Progress = Callable[[int, "int | None"], None]


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
