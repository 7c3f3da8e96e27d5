"""train.video_eval: the bundled clip's ground truth as COCO, and AP of pose JSON Lines on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from realtime.results import FramePoses
from realtime.samples import SYNTHETIC_WALK_GT
from realtime.sinks import JsonlWriter
from train.video_eval import evaluate_video, main, video_ground_truth


def _write_poses(path, frames: list[list[dict]]) -> None:
    """One JSON Lines record per frame holding `frames[t]`'s people as perfect predictions."""
    with JsonlWriter(path) as writer:
        for t, people in enumerate(frames):
            kpts = np.array([p["keypoints"] for p in people], np.float32).reshape(-1, 17, 3)
            kpts[..., 2] = 0.9  # a prediction's keypoint scores, not GT visibility codes
            boxes = np.array([p["bbox"] for p in people], np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            writer.write(
                FramePoses(
                    frame=t,
                    pts=t / 15,
                    boxes=boxes,
                    scores=np.full(len(people), 0.8, np.float32),
                    keypoints=kpts,
                    track_ids=np.array([p["track_id"] for p in people], np.int64),
                )
            )


def _labelled(p: dict) -> bool:
    """A person COCO evaluation counts: annotated, with at least one labelled keypoint."""
    return p["annotated"] and any(v > 0 for v in p["keypoints"][2::3])


@pytest.fixture(scope="module")
def gt() -> dict:
    return json.loads(SYNTHETIC_WALK_GT.read_text())


def test_ground_truth_becomes_one_coco_image_per_frame(gt):
    coco = video_ground_truth(SYNTHETIC_WALK_GT)
    assert sorted(coco.imgs) == list(range(gt["num_frames"])) == list(range(60))
    entries = [p for f in gt["frames"] for p in f]
    assert len(coco.anns) == len(entries)
    ignored = [a for a in coco.anns.values() if a["iscrowd"]]
    assert len(ignored) == sum(not p["annotated"] for p in entries) == 3
    ann, person = coco.imgToAnns[20][0], gt["frames"][20][0]
    assert ann["keypoints"] == person["keypoints"] and ann["bbox"] == person["bbox"]
    assert ann["area"] == person["area"] and ann["num_keypoints"] == 17


def test_perfect_poses_score_one_and_ignored_figures_do_not_count(gt, tmp_path):
    labelled = [[p for p in f if _labelled(p)] for f in gt["frames"]]
    # Poses on the figures too small to annotate fall in ignore regions: no false positives.
    shown = [[p for p in f if any(v > 0 for v in p["keypoints"][2::3])] for f in gt["frames"]]
    assert sum(map(len, shown)) > sum(map(len, labelled))
    for name, frames in (("shown", shown), ("labelled", labelled)):
        _write_poses(tmp_path / f"{name}.jsonl", frames)
        metrics = evaluate_video(SYNTHETIC_WALK_GT, tmp_path / f"{name}.jsonl")
        assert metrics["AP"] == pytest.approx(1.0, abs=1e-9)
        assert metrics["AR"] == pytest.approx(1.0, abs=1e-9)


def test_a_missed_person_lowers_recall_by_one_over_the_count(gt, tmp_path):
    frames = [[p for p in f if _labelled(p)] for f in gt["frames"]]
    total = sum(len(f) for f in frames)
    frames[10] = frames[10][1:]
    _write_poses(tmp_path / "poses.jsonl", frames)
    metrics = evaluate_video(SYNTHETIC_WALK_GT, tmp_path / "poses.jsonl")
    assert metrics["AR"] == pytest.approx((total - 1) / total, abs=1e-9)
    assert metrics["AP"] < 1.0


def test_shifted_poses_lose_ap(gt, tmp_path):
    frames = [[dict(p) for p in f if _labelled(p)] for f in gt["frames"]]
    for people in frames:
        for p in people:
            p["keypoints"] = [v + 6.0 if i % 3 == 0 else v for i, v in enumerate(p["keypoints"])]
    _write_poses(tmp_path / "poses.jsonl", frames)
    metrics = evaluate_video(SYNTHETIC_WALK_GT, tmp_path / "poses.jsonl")
    assert 0.2 < metrics["AP"] < 0.95


def test_mismatched_or_missing_files_are_refused(gt, tmp_path):
    _write_poses(tmp_path / "short.jsonl", gt["frames"][:-1])
    with pytest.raises(ValueError, match="poses for 59 frames, the ground truth for 60"):
        evaluate_video(SYNTHETIC_WALK_GT, tmp_path / "short.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"frame": 0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON Lines pose record"):
        evaluate_video(SYNTHETIC_WALK_GT, tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="poses not found"):
        evaluate_video(SYNTHETIC_WALK_GT, tmp_path / "none.jsonl")
    (tmp_path / "cut.json").write_text(SYNTHETIC_WALK_GT.read_text()[:500])
    with pytest.raises(ValueError, match=r"cut.json is not valid JSON"):
        evaluate_video(tmp_path / "cut.json", tmp_path / "short.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        main(["--gt", str(tmp_path / "none.json"), "--poses", str(tmp_path / "short.jsonl")])
    assert exit_info.value.code == 2


def test_cli_prints_the_metrics_table(gt, tmp_path, capsys):
    _write_poses(tmp_path / "poses.jsonl", [[p for p in f if _labelled(p)] for f in gt["frames"]])
    metrics = main(["--gt", str(SYNTHETIC_WALK_GT), "--poses", str(tmp_path / "poses.jsonl")])
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:2] == ["AP", "AP50"] and row.split()[0] == "100.0"
    assert metrics["AP"] == pytest.approx(1.0)
