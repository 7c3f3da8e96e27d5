"""train.video_eval: the bundled clip's ground truth as COCO, and AP of pose JSON Lines on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ccm.poses import FramePoses
from realtime.io.sinks import JsonlWriter
from realtime.samples import SYNTHETIC_WALK_GT
from train.video_eval import (
    FRAME_STRIDE,
    evaluate_video,
    jitter,
    lag_frames,
    main,
    matched_trajectories,
    read_poses,
    video_ground_truth,
)


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
    assert header.split()[-2:] == ["jitter_px", "lag_ms"] and row.split()[-2:] == ["0.00", "0"]
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["jitter"] == pytest.approx(0, abs=1e-3) and metrics["lag"] == 0


def _moved(frames: list[list[dict]], offset) -> list[list[dict]]:
    """Each person's keypoints plus offset(t, track_id) -> (dx, dy)."""
    out = []
    for t, people in enumerate(frames):
        row = []
        for p in people:
            dx, dy = offset(t, p["track_id"])
            k = np.asarray(p["keypoints"], np.float64).reshape(17, 3)
            k[:, 0] += dx
            k[:, 1] += dy
            row.append(dict(p, keypoints=k.reshape(-1).tolist()))
        out.append(row)
    return out


def test_jitter_sees_shake_but_not_a_steady_error(gt, tmp_path):
    frames = [[p for p in f if _labelled(p)] for f in gt["frames"]]
    _write_poses(tmp_path / "steady.jsonl", _moved(frames, lambda t, i: (3.0, -2.0 + 0.5 * t)))
    steady = evaluate_video(SYNTHETIC_WALK_GT, tmp_path / "steady.jsonl")
    assert steady["jitter"] == pytest.approx(0, abs=0.02)  # a constant or drifting error
    # An error flipping between +2 and -2 px in x: second difference 8 px in every frame.
    _write_poses(tmp_path / "shaky.jsonl", _moved(frames, lambda t, i: (2.0 * (-1) ** t, 0)))
    shaky = evaluate_video(SYNTHETIC_WALK_GT, tmp_path / "shaky.jsonl")
    assert shaky["jitter"] == pytest.approx(8.0, abs=0.02)


def test_lag_of_poses_a_frame_late(gt):
    """Poses of the previous frame: lag one frame (1000 / 15 ms); none for the truth itself."""
    frames = [[p for p in f if _labelled(p)] for f in gt["frames"]]
    true = read_poses_from(frames)
    late = read_poses_from([frames[0]] + frames[:-1])
    t, e = matched_trajectories(gt, true)
    assert jitter(t, e) == pytest.approx(0, abs=1e-3) and lag_frames(t, e) == 0
    t, e = matched_trajectories(gt, late)
    assert lag_frames(t, e) == pytest.approx(1.0, abs=0.05)
    t, e = matched_trajectories(gt, true[1:] + true[-1:])  # a frame early
    assert lag_frames(t, e) == pytest.approx(-1.0, abs=0.05)


def read_poses_from(frames: list[list[dict]]) -> list[FramePoses]:
    poses = []
    for t, people in enumerate(frames):
        kpts = np.array([p["keypoints"] for p in people], np.float32).reshape(-1, 17, 3)
        kpts[..., 2] = 0.9
        boxes = np.array([p["bbox"] for p in people], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        n = len(people)
        poses.append(
            FramePoses(t, t / 15, boxes, np.full(n, 0.8, np.float32), kpts, np.full(n, -1))
        )
    return poses


def test_clips_pool_into_one_coco_set_and_poses_read_in_frame_order(gt, tmp_path):
    coco = video_ground_truth([SYNTHETIC_WALK_GT, SYNTHETIC_WALK_GT])
    assert len(coco.imgs) == 120 and FRAME_STRIDE + 59 in coco.imgs
    assert len(coco.anns) == 2 * sum(len(f) for f in gt["frames"])
    frames = [[p for p in f if _labelled(p)] for f in gt["frames"]]
    _write_poses(tmp_path / "poses.jsonl", frames)
    lines = (tmp_path / "poses.jsonl").read_text().splitlines()
    (tmp_path / "shuffled.jsonl").write_text("\n".join(lines[::-1]) + "\n")
    poses = read_poses(tmp_path / "shuffled.jsonl", 60)
    assert [p.frame for p in poses] == list(range(60))
