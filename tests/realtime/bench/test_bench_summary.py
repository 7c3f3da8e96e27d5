"""The page `.ci/gpu-check` leaves as summary.md, from its steps and the scenarios' reports."""

from __future__ import annotations

import json
from pathlib import Path

from realtime.bench.summary import summarize


def _peer(weights: str, fps: float) -> dict:
    return {"weights": weights, "fps": fps, "people_per_frame": 40.0}


def _report(fps: float, memory: float | None, syncs: float | None, peers: list[dict]) -> dict:
    stage = {"median_ms": 2.0, "p95_ms": 3.0}
    return {
        "fps": fps,
        "latency_ms": {"median_ms": 12.5, "p95_ms": 20.25},
        "stages": {k: dict(stage, median_ms=i + 0.25) for i, k in
                   enumerate(("detect", "crop", "pose", "refine"))},
        "profile": {"pose": {"precision": "fp16"}},
        "people": {"per_frame": 40.0},
        "graphs_compiled_after_warmup": 0,
        "device": {"peak_memory_mb": memory},
        "host_syncs_per_frame": syncs,
        "references": peers,
        "reference": peers[0] if peers else None,
    }  # fmt: skip


def test_summary_lists_every_step_and_one_row_per_scenario(tmp_path: Path):
    (tmp_path / "environment.txt").write_text("gpu: NVIDIA H200\n")
    (tmp_path / "steps.tsv").write_text(
        "media\t0\t12\t\ncuda-tests\t1\t80\t\ntrain-epoch\t124\t60\t\nlate\tskip\t0\tdeadline\n"
    )
    peers = [_peer("yolo11m-pose.yaml", 55.0), _peer("weights/yolo26m-pose.pt", 61.25)]
    before_peers = _report(20.0, None, None, [])  # a report from before "references"
    before_peers.pop("references")
    before_peers["reference"] = {"fps": 55.0, "people_per_frame": 40.0}
    for name, report in (
        ("crowd", _report(150.0, 1234.4, 2.5, peers)),
        ("cpu", _report(3.0, None, None, [])),
        ("old", before_peers),
    ):
        (tmp_path / "bench" / name).mkdir(parents=True)
        (tmp_path / "bench" / name / "bench.json").write_text(json.dumps(report))
    (tmp_path / "bench" / "broken").mkdir()
    (tmp_path / "bench" / "broken" / "bench.json").write_text("{}")

    page = summarize(tmp_path)

    assert "gpu: NVIDIA H200" in page
    assert "| media | ok | 12 |  |" in page and "| cuda-tests | failed (1) | 80 |  |" in page
    assert (
        "| train-epoch | timed out | 60 |  |" in page
        and "| late | skipped | 0 | deadline |" in page
    )
    assert (
        "| crowd | fp16 | 150.0 | 12.5 / 20.2 | 0.2/1.2/2.2/3.2 | 40.0 | 0 | 1234 | 2.50 | "
        "yolo11m-pose 55.0 (40 people); yolo26m-pose 61.2 (40 people) |" in page
    )
    assert "| cpu | fp16 | 3.0 | 12.5 / 20.2 | 0.2/1.2/2.2/3.2 | 40.0 | 0 | - | - | - |" in page
    assert (
        "| old | fp16 | 20.0 | 12.5 / 20.2 | 0.2/1.2/2.2/3.2 | 40.0 | 0 | - | - | 55.0 (40 " in page
    )
    assert "| broken | unreadable report: 'stages' |" in page
