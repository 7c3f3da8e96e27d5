"""Which input a rendered video came from, recorded in the video itself.

The rendered mp4 carries a fingerprint of its source in its `comment` tag (a small JSON
object: the source's file name, size in bytes and the SHA-256 of its first MiB; no folder, so a
served download says nothing of the server's paths), written and committed with it.
`--skip-existing` skips an input only when the outputs under its name carry its own
fingerprint, and without `--overwrite` outputs that came from another file (or from nowhere
this can tell) are never replaced.

    mine = source_fingerprint(Path("clips/a.mp4"))
    earlier = recorded_source(Path("out/a.mp4"))     # None: no record
    same_source(earlier, mine)
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import av

logger = logging.getLogger(__name__)

HEAD_BYTES = 1 << 20  # the part of the source hashed: enough to tell clips apart, fast on any


def source_fingerprint(path: Path) -> dict[str, object]:
    """{"name": file name, "size": bytes, "head_sha256": SHA-256 of the first MiB}."""
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(HEAD_BYTES)).hexdigest()
    return {"name": path.name, "size": path.stat().st_size, "head_sha256": head}


def fingerprint_tag(fingerprint: dict[str, object]) -> str:
    """The text stored in the mp4's comment tag."""
    return json.dumps({"ccm_source": fingerprint}, sort_keys=True)


def recorded_source(video: Path) -> dict[str, object] | None:
    """The fingerprint a rendered mp4 records, or None (no such file, not ours, unreadable)."""
    try:
        with av.open(str(video)) as container:
            comment = container.metadata.get("comment", "")
        record = json.loads(comment).get("ccm_source") if comment else None
    except (av.error.FFmpegError, OSError, ValueError, AttributeError):
        logger.debug("no source recorded in %s", video, exc_info=True)
        return None
    return record if isinstance(record, dict) else None


def same_source(recorded: dict[str, object] | None, current: dict[str, object]) -> bool:
    """Whether a recorded fingerprint is the current file's: same size and first MiB (the
    name may differ: a moved or copied clip is the same input)."""
    if recorded is None:
        return False
    return (recorded.get("size"), recorded.get("head_sha256")) == (
        current["size"],
        current["head_sha256"],
    )


def earlier_outputs(current: dict[str, object] | None, video: Path, jsonl: Path) -> tuple[str, str]:
    """What lies under an input's output names already: ("none", ""), ("same", "") when the
    video records this input, or ("other", what they came from) for anything else there."""
    if not video.exists():
        return ("other", "a file of unknown origin") if jsonl.exists() else ("none", "")
    recorded = recorded_source(video)
    if current is not None and same_source(recorded, current):
        return "same", ""
    if recorded is None:
        return "other", "a file of unknown origin"
    return "other", f"another file, {recorded.get('name', '?')} ({recorded.get('size', '?')} bytes)"


def done_before(source: Path, video: Path, jsonl: Path) -> bool:
    """Whether both outputs are there and the video records this very input: what
    `--skip-existing` skips (`process_video` makes the same test on its way)."""
    try:
        current = source_fingerprint(source)
    except OSError:
        return False  # processing it says what is wrong
    return jsonl.is_file() and earlier_outputs(current, video, jsonl)[0] == "same"
