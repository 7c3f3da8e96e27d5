"""Input arguments -> files and output names: literal paths, patterns, folders, collisions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from realtime.batch.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, expand_inputs
from realtime.io.images import natural_key


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    _touch(
        tmp_path,
        "a/x.mp4", "b/x.mp4", "c/clip [1080p].mp4", "c/clip?.mp4", "c/clip*.mp4",
        "c/clip.avi", "c/clip.mp4", "c/sub/deep.mkv", "c/notes.txt", "c/.hidden.mp4",
        "c/.cache/y.mp4", "n/v10.mp4", "n/v2.mp4", "n/v1.mp4",
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _names(specs, **kwargs) -> list[tuple[str, str]]:
    found = expand_inputs(specs, VIDEO_SUFFIXES, **kwargs)
    return [(f.path.as_posix(), f.name) for f in found.files]


def test_existing_paths_are_literal_whatever_their_characters(tree: Path):
    for name in ("clip [1080p].mp4", "clip?.mp4", "clip*.mp4"):
        found = expand_inputs([f"c/{name}"], VIDEO_SUFFIXES)
        assert [(f.path.as_posix(), f.name) for f in found.files] == [(f"c/{name}", name[:-4])]
        assert found.unmatched == []
    # Beside other inputs, too; and an absolute path is just as literal.
    absolute = str(tree / "c" / "clip [1080p].mp4")
    assert _names([absolute, "a/x.mp4"]) == [(Path(absolute).as_posix(), "c/clip [1080p]"),
                                             ("a/x.mp4", "a/x")]  # fmt: skip


def test_arguments_that_give_nothing_are_reported_not_dropped(tree: Path):
    found = expand_inputs(
        ["a/x.mp4", "missing.mp4", "nothing*.mp4", "c/*.txt", "empty/", "c/[x].mp4"],
        VIDEO_SUFFIXES,
    )
    assert [f.path.as_posix() for f in found.files] == ["a/x.mp4"]
    reasons = dict(found.unmatched)
    assert list(reasons) == ["missing.mp4", "nothing*.mp4", "c/*.txt", "empty/", "c/[x].mp4"]
    assert reasons["missing.mp4"] == "no such file or folder"
    assert reasons["nothing*.mp4"] == "no such file, and no file matches it as a pattern"
    assert reasons["c/*.txt"].startswith("the pattern matches no video file (.avi, .m4v")
    assert reasons["empty/"] == "no such file or folder"
    assert reasons["c/[x].mp4"] == "no such file, and no file matches it as a pattern"
    (tree / "empty").mkdir()
    found = expand_inputs(["empty"], VIDEO_SUFFIXES)
    assert found.unmatched == [("empty", f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) "
                                "in this folder")]  # fmt: skip


def test_patterns_keep_wanted_suffixes_and_mirror_below_their_fixed_folders(tree: Path):
    assert _names(["c/*.mp4"]) == [
        ("c/clip [1080p].mp4", "clip [1080p]"), ("c/clip*.mp4", "clip*"),
        ("c/clip.mp4", "clip"), ("c/clip?.mp4", "clip?"),
    ]  # fmt: skip
    assert _names(["**/deep.mkv"]) == [("c/sub/deep.mkv", "c/sub/deep")]
    assert _names(["c/s*"]) == [("c/sub/deep.mkv", "deep")]  # a matched folder is searched


def test_folders_are_searched_recursively_in_natural_order_without_hidden_files(tree: Path):
    assert _names(["n"]) == [("n/v1.mp4", "v1"), ("n/v2.mp4", "v2"), ("n/v10.mp4", "v10")]
    names = _names(["c"])
    assert [n for _, n in names] == [
        "clip [1080p]", "clip*", "clip.avi", "clip.mp4", "clip?", "sub/deep",
    ]  # fmt: skip
    assert natural_key("a/img2.png") < natural_key("a/img10.png") < natural_key("b/img1.png")
    mixed = ["a10", "a/b", "a1", "a2", "x.mp4", "X.mp4"]
    assert sorted(mixed, key=natural_key) == ["a/b", "a1", "a2", "a10", "X.mp4", "x.mp4"]


def test_outputs_never_collide(tree: Path):
    # Same stem in two folders, named directly: mirrored below their common parent.
    assert _names(["a/x.mp4", "b/x.mp4"]) == [("a/x.mp4", "a/x"), ("b/x.mp4", "b/x")]
    # Same stem from two folder arguments: told apart by the folder each came from.
    assert _names(["a", "b"]) == [("a/x.mp4", "a/x"), ("b/x.mp4", "b/x")]
    # Same stem, different suffix: the suffix stays in the name.
    assert _names(["c/clip.avi", "c/clip.mp4"]) == [
        ("c/clip.avi", "clip.avi"), ("c/clip.mp4", "clip.mp4"),
    ]  # fmt: skip
    # Same folder name in two places: a number is the last resort.
    _touch(tree, "p/a/x.mp4", "q/a/x.mp4", "q/a/X.mp4" if os.name != "nt" else "q/a/y.mp4")
    names = _names(["p/a", "q/a"])
    assert [n for _, n in names] == ["a/x", "a/X-2", "a/x-3"]
    assert len({n.casefold() for _, n in names}) == 3  # distinct on case-blind disks too
    # The same file twice is one input.
    assert _names(["a/x.mp4", "a", "./a/x.mp4"]) == [("a/x.mp4", "x")]
    # Stems that collide keep their suffixes even when two suffixes match (case-blind): OUT/x.mp4
    # never holds the poses of x.mkv.
    if os.name != "nt":
        _touch(tree, "m/x.mkv", "m/X.MP4", "m/x.mp4")
        assert [n for _, n in _names(["m"])] == ["x.mkv", "m/X.MP4", "m/x.mp4-2"]


def test_names_are_stable_so_skip_existing_finds_them(tree: Path):
    specs = ["a", "b", "c/clip.avi", "c/clip.mp4", "c/*.mkv", "c/sub"]
    assert _names(specs) == _names(list(specs))


def test_images_keep_their_suffix_and_the_output_folder_is_left_out(tree: Path):
    _touch(tree, "imgs/a.jpg", "imgs/a.png", "imgs/sub/b.webp", "imgs/out/a.png", "imgs/c.gif")
    found = expand_inputs(["imgs"], IMAGE_SUFFIXES, keep_suffix=True, exclude=Path("imgs/out"))
    assert [f.name for f in found.files] == ["a.jpg", "a.png", "sub/b.webp"]
    assert all(f.root == Path("imgs") for f in found.files)
    found = expand_inputs(["imgs/*/*.webp", "x/"], IMAGE_SUFFIXES, keep_suffix=True, kind="image")
    assert [f.name for f in found.files] == ["sub/b.webp"]
    assert found.unmatched == [("x/", "no such file or folder")]
