"""An input is never overwritten by its own output: `video clip.mp4 --out .` and the like are
refused before anything runs, whatever name reaches the input (same path, symlink, hard link)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from realtime.batch.cli import run_images, run_videos
from realtime.batch.output_guard import refuse_outputs_on_inputs
from realtime.batch.usage import UsageError
from realtime.stream.assemble import PipelineSpec


def test_video_named_directly_with_out_dot_is_refused_and_kept(tmp_path, make_clip, monkeypatch):
    clip = make_clip(tmp_path / "clip.mp4", frames=3)
    before = clip.read_bytes()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"--out \.: the output clip\.mp4 would replace the input"):
        run_videos(["clip.mp4"], Path("."), PipelineSpec())
    assert clip.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_image_named_directly_with_out_dot_is_refused(tmp_path, monkeypatch):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not really a jpeg, never read")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"the output photo\.jpg would replace the input photo"):
        run_images(["photo.jpg"], Path("."), PipelineSpec())
    assert photo.read_bytes() == b"\xff\xd8 not really a jpeg, never read"


def test_an_out_folder_that_is_a_symlink_to_the_inputs_is_refused(tmp_path, make_clip):
    (tmp_path / "clips").mkdir()
    clip = make_clip(tmp_path / "clips" / "clip.mp4", frames=3)
    (tmp_path / "out").symlink_to(tmp_path / "clips")
    with pytest.raises(UsageError, match="would replace the input"):
        run_videos([str(clip)], tmp_path / "out", PipelineSpec())
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["clip.mp4"]


def test_links_and_other_spellings_reach_the_same_file(tmp_path):
    source = tmp_path / "a" / "x.mp4"
    source.parent.mkdir()
    source.write_bytes(b"video")
    os.link(source, tmp_path / "hard.mp4")
    (tmp_path / "soft.mp4").symlink_to(source)
    for output in (tmp_path / "hard.mp4", tmp_path / "soft.mp4", tmp_path / "a" / ".." / "a/x.mp4"):
        with pytest.raises(UsageError, match=f"the output {output} would replace the input"):
            refuse_outputs_on_inputs([source], [tmp_path / "other.jsonl", output], "--out o")
    # Distinct files, and outputs that do not exist yet, pass.
    (tmp_path / "y.mp4").write_bytes(b"video")
    refuse_outputs_on_inputs([source], [tmp_path / "y.mp4", tmp_path / "new.mp4"], "--out o")


def test_a_second_images_run_into_the_same_folder_needs_overwrite(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"never read")
    out = tmp_path / "posed"
    out.mkdir()
    (out / "poses.jsonl").write_text('{"image": "earlier.jpg"}\n')
    with pytest.raises(
        UsageError,
        match=f"--out {out}: {out / 'poses.jsonl'} exists \\(an earlier run\\); pass --overwrite",
    ):
        run_images([str(tmp_path / "photos")], out, PipelineSpec())
    assert (out / "poses.jsonl").read_text() == '{"image": "earlier.jpg"}\n'
