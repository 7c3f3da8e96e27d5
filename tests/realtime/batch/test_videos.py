"""process_video with a stand-in pipeline: outputs only for complete inputs, in the displayed
orientation, under the names given, and nothing left behind by an interrupt."""

from __future__ import annotations

import errno
import json
import subprocess
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ccm.poses import FramePoses
from realtime.batch.provenance import done_before
from realtime.batch.report import describe
from realtime.batch.videos import output_paths, partial_paths, process_video
from realtime.render import render_frame
from realtime.stream.results import FrameResult


class SquareFinder:
    """The pipeline interface process_video uses (reset, stream), with one "person" per frame:
    every keypoint at the centre of the frame's white square (pixel centres at integers)."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.interrupt_at = interrupt_at
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def stream(self, frames):
        for frame in frames:
            if frame.index == self.interrupt_at:
                raise KeyboardInterrupt
            ys, xs = np.nonzero(frame.image.min(axis=2) > 240)
            x, y = float(xs.mean()), float(ys.mean())
            keypoints = torch.tensor([[[x, y, 1.0]] * 17])
            box = torch.tensor(
                [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float
            )
            poses = FramePoses(
                frame.index,
                frame.pts,
                box,
                torch.ones(1),
                keypoints,
                torch.zeros(1, dtype=torch.long),
            )
            yield FrameResult(frame, poses, {"detect": 0.0})


def _square_centre(index: int, height: int, width: int) -> tuple[float, float]:
    """Centre (x, y) of tests/conftest.py's clip_frame square, as stored."""
    side = max(4, min(height, width) // 6)
    return 2 + index + (side - 1) / 2, 2 + (side - 1) / 2


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_rotated_clip_comes_out_as_displayed_with_keypoints_to_match(tmp_path: Path, make_clip):
    # A portrait phone clip: stored 80 wide x 48 high, tagged to be turned clockwise.
    height, width, n = 48, 80, 8
    clip = make_clip(tmp_path / "phone.mp4", frames=n, size=(height, width), rotation=-90)
    out = tmp_path / "out"
    report = process_video(clip, out, SquareFinder(), render_frame, name="sub/phone")
    assert report.error is None and report.frames == n
    assert (report.video, report.jsonl) == output_paths("sub/phone", out)
    assert _leftovers(out) == ["phone.jsonl", "phone.mp4"]
    with av.open(str(report.video)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    assert len(frames) == n
    assert all(f.rotation == 0 for f in frames)  # turned in the pixels, no tag left to apply
    assert (frames[0].width, frames[0].height) == (height, width)  # portrait
    for line, i in zip(report.jsonl.read_text().splitlines(), range(n), strict=True):
        record = json.loads(line)
        x, y = _square_centre(i, height, width)
        # Turned clockwise: stored (x, y) is shown at (height - 1 - y, x).
        expected = [height - 1 - y, x]
        keypoints = np.array(record["poses"][0]["keypoints"])
        np.testing.assert_allclose(keypoints[:, :2], [expected] * 17, atol=0.51)
        assert record["frame"] == i and record["pts"] == pytest.approx(i / 10, abs=1e-4)


def test_cut_off_fast_start_mp4_leaves_nothing_under_its_names(tmp_path: Path, make_clip):
    full = make_clip(tmp_path / "full.mp4", frames=60, size=(64, 96), faststart=True)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / "out"
    pipeline = SquareFinder()
    report = process_video(clip, out, pipeline, render_frame, name="sub/clip")
    assert report.error is not None and 0 < report.frames < 60
    # Nothing under the final names; what was read before the break, under names that say so.
    partial = partial_paths("sub/clip", out)
    assert (report.video, report.jsonl) == partial
    assert report.error == (
        f"reading failed after {report.frames} frames: the data ends or is damaged at frame "
        f"{report.error.split('damaged at frame ')[1].split(' ')[0]} of 60 (a cut-off or damaged "
        f"file); the {report.frames} frames before are in {partial[0]} and {partial[1]}"
    )
    assert _leftovers(out) == ["clip.partial.jsonl", "clip.partial.mp4"]  # no temp file
    with av.open(str(partial[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == report.frames
    lines = partial[1].read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(report.frames))
    # Once the whole file is there, the same pipeline object does it all and the partial
    # files go.
    clip.write_bytes(full.read_bytes())
    good = process_video(clip, out, pipeline, render_frame, name="sub/clip")
    assert good.error is None and good.frames == 60 and pipeline.resets == 2
    assert (good.video, good.jsonl) == output_paths("sub/clip", out)
    assert _leftovers(out) == ["clip.jsonl", "clip.mp4"]


def test_cut_off_matroska_is_a_failed_input_with_partial_outputs(tmp_path: Path, make_clip):
    full = make_clip(tmp_path / "full.mkv", frames=40, size=(48, 64))
    clip = tmp_path / "clip.mkv"
    clip.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / "out"
    report = process_video(clip, out, SquareFinder(), render_frame)
    assert report.error is not None and "but the container lists 4.00 s" in report.error
    assert (report.video, report.jsonl) == partial_paths("clip", out)
    assert _leftovers(out) == ["clip.partial.jsonl", "clip.partial.mp4"]
    lines = report.jsonl.read_text().splitlines()
    assert 0 < report.frames < 40 and len(lines) == report.frames


def test_an_input_broken_from_its_first_frame_leaves_nothing(tmp_path: Path, make_clip):
    full = make_clip(tmp_path / "full.mp4", frames=30, size=(48, 64), faststart=True)
    clip = tmp_path / "clip.mp4"
    with av.open(str(full)) as container:
        first = next(p for p in container.demux(video=0) if p.size)
    clip.write_bytes(full.read_bytes()[: first.pos + first.size // 2])  # half the first frame
    out = tmp_path / "out"
    report = process_video(clip, out, SquareFinder(), render_frame)
    assert report.error == (
        "not a decodable video: the data ends or is damaged at frame 1 of 30 (a cut-off or "
        "damaged file)"
    )
    assert (report.video, report.jsonl, report.frames) == (None, None, 0)
    assert _leftovers(out) == []


def test_skip_existing_uses_the_output_name(tmp_path: Path, make_clip):
    clip = make_clip(tmp_path / "x.mp4", frames=3)
    out = tmp_path / "out"
    first = process_video(clip, out, SquareFinder(), render_frame, name="a/x")
    assert first.error is None
    again = process_video(clip, out, SquareFinder(), render_frame, skip_existing=True, name="a/x")
    assert again.skipped and again.video == out / "a" / "x.mp4"
    other = process_video(clip, out, SquareFinder(), render_frame, skip_existing=True, name="b/x")
    assert not other.skipped and other.frames == 3
    assert _leftovers(out) == ["x.jsonl", "x.jsonl", "x.mp4", "x.mp4"]


def test_skip_existing_skips_only_what_this_input_produced(tmp_path: Path, make_clip):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = make_clip(tmp_path / "a" / "clip.mp4", frames=3)
    second = make_clip(tmp_path / "b" / "clip.mp4", frames=5)
    out = tmp_path / "out"
    assert process_video(first, out, SquareFinder(), render_frame).error is None
    before = [p.read_bytes() for p in output_paths("clip", out)]
    # A different clip with the same output name is not "done", and its results do not
    # replace the first clip's without --overwrite.
    other = process_video(second, out, SquareFinder(), render_frame, skip_existing=True)
    assert not other.skipped and other.frames == 0
    assert other.error == (
        f"{out / 'clip.mp4'} or {out / 'clip.jsonl'} holds the results of another file, "
        f"clip.mp4 ({first.stat().st_size} bytes), not of this input; pass --overwrite to "
        "replace them, or choose another --out"
    )
    assert [p.read_bytes() for p in output_paths("clip", out)] == before
    plain = process_video(second, out, SquareFinder(), render_frame)
    assert plain.error == other.error
    # The same clip, also copied elsewhere, is done; --overwrite replaces another's results.
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(first.read_bytes())
    again = process_video(copy, out, SquareFinder(), render_frame, None, True, name="clip")
    assert again.skipped and [p.read_bytes() for p in output_paths("clip", out)] == before
    replaced = process_video(second, out, SquareFinder(), render_frame, overwrite=True)
    assert replaced.error is None and replaced.frames == 5
    assert len(output_paths("clip", out)[1].read_text().splitlines()) == 5
    # Files under the names that no run of ours made are never taken for done, nor replaced.
    stranger = tmp_path / "out2"
    stranger.mkdir()
    (stranger / "clip.jsonl").write_text("my notes\n")
    kept = process_video(second, stranger, SquareFinder(), render_frame, skip_existing=True)
    assert "holds the results of a file of unknown origin" in kept.error
    assert (stranger / "clip.jsonl").read_text() == "my notes\n"


def test_interrupt_removes_partial_files_and_keeps_finished_ones(tmp_path: Path, make_clip):
    out = tmp_path / "out"
    done = make_clip(tmp_path / "done.mp4", frames=3)
    assert process_video(done, out, SquareFinder(), render_frame).error is None
    clip = make_clip(tmp_path / "clip.mp4", frames=12)
    with pytest.raises(KeyboardInterrupt):
        process_video(clip, out, SquareFinder(interrupt_at=5), render_frame)
    assert _leftovers(out) == ["done.jsonl", "done.mp4"]
    # The render / encode thread ended before its writers were closed and deleted.
    assert not [t for t in threading.enumerate() if t.name == "ccm-output"]


def test_missing_and_undecodable_inputs_are_reports_not_exceptions(tmp_path: Path):
    bad = tmp_path / "random.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    report = process_video(bad, tmp_path / "out", SquareFinder(), render_frame)
    assert report.error.startswith("not a decodable video: ")
    missing = process_video(tmp_path / "none.mp4", tmp_path / "out", SquareFinder(), render_frame)
    assert missing.error == f"source not found: {tmp_path / 'none.mp4'}"
    assert describe(MemoryError(), "x") == "MemoryError"
    assert describe(KeyError("k"), "x") == "KeyError: 'k'"
    assert describe(ValueError("x: bad"), "x") == "bad"


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """Mounts a tmpfs of the size asked for (KiB) at tmp_path/"disk"; skips where mounting is
    not permitted (not root, or in a container without the right)."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(point)]
        if subprocess.run(command, capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_a_full_disk_loses_nothing_and_names_the_file_system(tmp_path, make_clip, small_tmpfs):
    clip = make_clip(tmp_path / "clip.mp4", frames=40, size=(120, 160))
    reference = process_video(clip, tmp_path / "ref", SquareFinder(), render_frame)
    sizes = [p.stat().st_size for p in (reference.video, reference.jsonl)]
    video_size, jsonl_size = sizes
    # Room for the JSONL and half the mp4; then not even for half the JSONL.
    for kib in ((jsonl_size + video_size // 2) // 4096 * 4, jsonl_size // 2 // 4096 * 4 or 4):
        disk = small_tmpfs(kib)
        report = process_video(clip, disk, SquareFinder(), render_frame)
        assert report.error is not None and report.error.startswith(
            f"no space left on the file system mounted at {disk} (holding {disk}; "
        ), report.error
        assert report.error.endswith("frames; nothing written)")
        assert f"KiB free of {kib} KiB" in report.error
        assert (report.video, report.jsonl) == (None, None)
        assert _leftovers(disk) == []  # no final name, no temporary file


def test_an_injected_enospc_at_either_writer_leaves_no_file(tmp_path, make_clip, monkeypatch):
    from realtime.io import sinks

    clip = make_clip(tmp_path / "clip.mp4", frames=6)
    full = OSError(errno.ENOSPC, "No space left on device")

    def failing_finish(self):
        self.abort()
        raise full

    with monkeypatch.context() as patch:  # the mp4 fails: the JSONL must not stay
        patch.setattr(sinks.Mp4Writer, "finish", failing_finish)
        report = process_video(clip, tmp_path / "a", SquareFinder(), render_frame)
    assert report.error.startswith("no space left on the file system mounted at ")
    assert report.error.endswith("(stopped after 6 frames; nothing written)")
    assert _leftovers(tmp_path / "a") == []

    class FullOnClose:  # buffered text that fails to flush when closed, as on a full disk
        def __init__(self, *args, **kwargs):
            self._fh = open(*args, **kwargs)  # noqa: SIM115

        def write(self, text):
            return self._fh.write(text)

        def close(self):
            self._fh.close()
            raise full

    monkeypatch.setattr(sinks, "open", FullOnClose, raising=False)
    report = process_video(clip, tmp_path / "b", SquareFinder(), render_frame)
    assert report.error.startswith("no space left on the file system mounted at ")
    assert _leftovers(tmp_path / "b") == []  # the JSONL's temporary file too


def test_done_before_asks_for_both_outputs_of_this_very_input(tmp_path: Path, make_clip):
    # What a Ray driver skips without starting a worker: the same answer process_video gives.
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = make_clip(tmp_path / "a" / "clip.mp4", frames=3)
    second = make_clip(tmp_path / "b" / "clip.mp4", frames=5)
    out = tmp_path / "out"
    assert process_video(first, out, SquareFinder(), render_frame).error is None
    video, jsonl = output_paths("clip", out)
    assert done_before(first, video, jsonl)
    assert not done_before(second, video, jsonl)  # another file's results
    assert not done_before(tmp_path / "missing.mp4", video, jsonl)
    jsonl.unlink()
    assert not done_before(first, video, jsonl)  # half the outputs: not done
    redone = process_video(first, out, SquareFinder(), render_frame, skip_existing=True)
    assert not redone.skipped and redone.frames == 3 and done_before(first, video, jsonl)
