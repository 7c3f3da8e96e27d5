"""train.live_study: every live setting scored on the same held-out clips, with how often the
detector and the flip test ran."""

from __future__ import annotations

import pytest

from realtime.stream.assemble import PipelineSpec, build_pipeline
from realtime.stream.pipeline import PipelineConfig
from train import live_study
from train.synthetic.videos import VideoConfig
from train.video_eval import evaluate_frames

SETTINGS = {
    "every frame": ("openvino", "auto", PipelineConfig(det_every=1, live_flip="always")),
    "every 3rd, flip between": (
        "openvino",
        "auto",
        PipelineConfig(det_every=3, live_flip="between"),
    ),
}


@pytest.fixture
def clips(tmp_path, monkeypatch):
    small = VideoConfig(width=320, height=240, fps=10, seconds=1.2, num_people=2)
    monkeypatch.setattr(live_study, "CLIP", small)
    monkeypatch.setattr(live_study, "SETTINGS", SETTINGS)
    return live_study.make_clips(tmp_path, [91, 92])


def test_each_setting_is_scored_on_the_same_clips(clips):
    assert [c.name for c in clips] == ["walk_s91.mp4", "walk_s92.mp4"]
    every, third = live_study.table(clips)
    assert every[0] == "every frame" and every[4:6] == ["1.00", "1.00"]
    detected, flipped = float(third[4]), float(third[5])
    assert 0.33 <= detected < 1  # every 3rd frame (printed to 2 places), and after a lost track
    assert flipped == pytest.approx(1 - detected, abs=0.01)  # the frames between detections
    for row in (every, third):
        assert 0 <= float(row[1]) <= float(row[2]) <= 100  # AP <= AP50
        assert 0 < float(row[6]) <= float(row[7])  # latency p50 <= p95


def test_a_single_clip_scores_as_video_eval_scores_its_poses(clips, monkeypatch):
    monkeypatch.setattr(live_study, "SETTINGS", {"every frame": SETTINGS["every frame"]})
    ((_, ap, ap50, ar, *_),) = live_study.table(clips[:1])
    pipeline = build_pipeline(PipelineSpec()).sharing_models(
        config=SETTINGS["every frame"][2], temporal=live_study._temporal(PipelineSpec().temporal)
    )
    poses, latency, counts = live_study.run_live(pipeline, clips[0])
    assert len(poses) == len(latency) == counts["frames"] == counts["detected"] == 12
    metrics = evaluate_frames(clips[0].with_suffix(".json"), poses)
    assert [ap, ap50, ar] == [f"{100 * metrics[k]:.1f}" for k in ("AP", "AP50", "AR")]


def test_the_live_defaults_row_runs_what_live_sources_get():
    live = live_study._base(PipelineSpec(), "auto", "auto")
    assert live_study.SETTINGS["live defaults"][:2] == ("auto", "auto")
    assert (live.estimator.describe()["precision"], live.detector.precision) == ("int8", "int8")
    float_row = live_study._base(PipelineSpec(), "openvino", "auto")
    assert float_row.estimator.describe()["precision"] != "int8"
