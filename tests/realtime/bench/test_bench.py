"""The FPS benchmark on a tiny random-weight pose model and a random-weight yolo11n, on the CPU,
beside random-weight YOLO11n-pose and YOLO26n-pose peers.

No timing is asserted: the tests check that every stage is timed, that the report's numbers agree
with each other, and that people per frame are what was asked for.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from app_module import load_app

from realtime.offline import configure_offline

configure_offline()  # before anything imports ultralytics

from ccm.checkpoint import PoseConfig, save_checkpoint  # noqa: E402
from realtime.bench.config import BenchConfig  # noqa: E402
from realtime.bench.frames import PeopleOverride, load_ground_truth_boxes, tiled_boxes  # noqa: E402
from realtime.bench.run import run_benchmark  # noqa: E402
from realtime.detect.detector import Detections, DetectorConfig  # noqa: E402
from realtime.io.frames import Frame  # noqa: E402
from realtime.samples import VTEST_SHORT  # noqa: E402
from realtime.stream.assemble import PipelineSpec, build_pipeline  # noqa: E402
from realtime.stream.pipeline import PipelineConfig, PosePipeline  # noqa: E402
from realtime.stream.results import STAGES  # noqa: E402
from realtime.weights.manifest import WEIGHTS_DIR  # noqa: E402
from realtime.weights.recommended import DEMO_NOTICE  # noqa: E402
from train.synthetic.videos import VideoConfig, generate_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pose_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = PoseConfig("ccm_mobilenetv2", input_size=(128, 96))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return save_checkpoint(path, config.build_model(), config)


@pytest.fixture(scope="module")
def options(pose_checkpoint: Path) -> PipelineSpec:
    # A random-weight YOLO scores every box alike: conf 0 and max_det 3 give three "people".
    return PipelineSpec(
        pose=pose_checkpoint,
        detector=Path("yolo11n.yaml"),
        device="cpu",
        detection=DetectorConfig(conf=0.0, max_det=3, imgsz=320),
        pipeline=PipelineConfig(min_pose_score=0.0),
    )


@pytest.fixture(scope="module")
def pipeline(options: PipelineSpec):
    return build_pipeline(options)


def check_report(report: dict, out: Path, frames: int) -> None:
    """What every report must satisfy, read back from bench.json."""
    saved = json.loads((out / "bench.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["frames"] == frames
    assert list(saved["stages"]) == list(STAGES)
    for stage, stats in saved["stages"].items():
        assert stats["median_ms"] > 0, stage
        assert stats["p95_ms"] >= stats["median_ms"], stage
    assert saved["fps"] == pytest.approx(frames / saved["total_s"], rel=1e-12)
    # Each timed frame's loop lies inside the total (warm-up is outside both).
    assert saved["loop_ms"]["mean_ms"] * frames <= saved["total_s"] * 1000 + 1e-6
    assert saved["device"]["type"] == "cpu" and saved["cpu"]["model"]
    assert {"torch", "ultralytics", "torchvision"} <= set(saved["versions"])
    assert saved["pose_model"]["arch"] == "ccm_mobilenetv2"
    assert saved["pose_model"]["input_size"] == [128, 96]
    assert saved["demo_weights"] is None  # a checkpoint of its own and a yaml detector
    image = cv2.imread(str(out / "bench.png"))
    assert image is not None and image.ndim == 3 and min(image.shape[:2]) > 100


def test_throughput_mode_times_every_stage_with_detector_people(tmp_path, options, pipeline):
    config = BenchConfig(source=VTEST_SHORT, frames=10, warmup=1, out=tmp_path)
    report = run_benchmark(options, config, pipeline=pipeline, table=io.StringIO())

    check_report(report, tmp_path, 10)
    assert report["mode"] == "throughput"
    assert report["people"]["source"] == "detector"
    assert report["people"]["per_frame"] == 3.0 and report["people"]["min"] == 3
    assert report["people"]["detector_boxes_per_call"] == 3.0
    assert report["source"]["passes"] == 1  # 11 of 50 frames: no second pass
    assert report["references"] == [] and report["reference"] is None
    assert report["fps_ratio"] is None


def test_latency_mode_with_fixed_people_tiles_boxes_and_adds_up(tmp_path, options, pipeline):
    config = BenchConfig(frames=10, warmup=1, mode="latency", out=tmp_path, fixed_people=5)
    table = tmp_path / "table.txt"
    with open(table, "w") as fh:
        report = run_benchmark(options, config, pipeline=pipeline, table=fh)

    check_report(report, tmp_path, 10)
    people = report["people"]
    assert people["source"] == "fixed" and people["fixed"] == 5
    assert (people["per_frame"], people["min"], people["max"]) == (5.0, 5, 5)
    assert people["poses_per_frame"] == 5.0
    # Latency (the pipeline's own stage timers) covers the whole pipeline call: the loop's wall
    # clock less the decode, render and encode the benchmark times around that call.
    stages = report["stages"]
    call_ms = report["loop_ms"]["mean_ms"] - sum(
        stages[s]["mean_ms"] for s in ("decode", "render", "encode")
    )
    # A stage left untimed (or work outside every stage) shows as a gap; the untimed rest is the
    # call's own bookkeeping, well under a millisecond.
    latency = report["latency_ms"]["mean_ms"]
    assert call_ms - (0.02 * call_ms + 2.0) <= latency <= call_ms + 1e-6
    # Nothing overlaps in latency mode: a frame's loop holds all of its stages.
    all_stages = sum(report["stages"][s]["mean_ms"] for s in STAGES)
    assert report["loop_ms"]["mean_ms"] >= all_stages - 1e-6
    assert report["config"]["bench"]["fixed_people"] == 5
    assert report["config"]["pipeline"]["pipeline"]["sync_timing"] is True
    assert report["config"]["pipeline"]["detection"]["weights"] == "yolo11n.yaml"
    text = table.read_text()
    assert "fixed at 5" in text and "latency p50" in text
    assert all(f"\n{stage} " in text for stage in STAGES)


def test_ground_truth_people_follow_the_clip_through_its_loops(tmp_path, options, pipeline):
    clip = generate_video(tmp_path / "walk.mp4", VideoConfig(320, 240, fps=10, seconds=0.4))
    counts = [1, 4, 2, 3]  # people in clip frames 0..3
    frames = [[{"bbox": [10.0 + 30 * j, 20.0, 25.0, 60.0]} for j in range(n)] for n in counts]
    clip.ground_truth.write_text(json.dumps({"width": 320, "height": 240, "frames": frames}))
    config = BenchConfig(
        source=clip.video, frames=6, warmup=1, out=tmp_path / "out",
        people_from_gt=clip.ground_truth,
    )  # fmt: skip
    every_frame = dataclasses.replace(pipeline.config, det_every=1)  # the people of each frame
    every = PosePipeline(pipeline.detector, pipeline.estimator, pipeline.temporal, every_frame)
    report = run_benchmark(options, config, pipeline=every, table=io.StringIO())

    check_report(report, tmp_path / "out", 6)
    # Timed frames are clip frames 1, 2, 3, 0, 1, 2 (the warm-up took frame 0).
    expected = [counts[i % 4] for i in range(1, 7)]
    people = report["people"]
    assert people["source"] == "ground-truth"
    assert people["per_frame"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert (people["min"], people["max"]) == (min(expected), max(expected))
    assert report["source"]["passes"] == 2


PEERS = ("yolo11n-pose.yaml", "yolo26n-pose.yaml")


@pytest.fixture(scope="module")
def app():
    return load_app()


def test_reference_times_every_peer_on_the_same_frames(tmp_path, options, pipeline):
    config = BenchConfig(
        frames=3, warmup=1, mode="latency", out=tmp_path, reference=True, reference_weights=PEERS,
    )  # fmt: skip
    table = io.StringIO()
    report = run_benchmark(options, config, pipeline=pipeline, table=table)

    check_report(report, tmp_path, 3)
    saved = json.loads((tmp_path / "bench.json").read_text())
    peers = saved["references"]
    assert [p["weights"] for p in peers] == list(PEERS)
    for ref in peers:
        assert ref["random_weights"] is True and ref["frames"] == 3
        # With confidence 0 and at most 3 boxes, random weights pose as many people as ours.
        assert ref["people_per_frame"] == 3.0 == report["people"]["per_frame"]
        assert ref["fps"] > 0
        assert ref["fps"] == pytest.approx(3 / ref["total_s"], rel=1e-12)
        # Ultralytics' own stage times, and the same job as ours: the frames drawn and encoded.
        assert list(ref["stages"]) == ["preprocess", "inference", "postprocess", "decode",
                                       "render", "encode"]  # fmt: skip
        for stage in ("preprocess", "inference", "postprocess", "render", "encode"):
            assert ref["stages"][stage]["median_ms"] > 0, (ref["weights"], stage)
        assert ref["latency_ms"]["mean_ms"] == pytest.approx(
            sum(ref["stages"][s]["mean_ms"] for s in ("preprocess", "inference", "postprocess")),
            rel=1e-9,
        )
        assert ref["fps_ratio"] == pytest.approx(saved["fps"] / ref["fps"], rel=1e-9)
        ours, theirs = saved["latency_ms"], ref["latency_ms"]
        assert ref["latency_ratio"]["median"] == pytest.approx(
            ours["median_ms"] / theirs["median_ms"], rel=1e-9
        )
        assert ref["latency_ratio"]["p95"] == pytest.approx(
            ours["p95_ms"] / theirs["p95_ms"], rel=1e-9
        )
    # The keys of the one reference before there were several: the first peer's.
    assert saved["reference"] == peers[0] and saved["fps_ratio"] == peers[0]["fps_ratio"]
    assert saved["config"]["bench"]["reference_weights"] == list(PEERS)

    text = table.getvalue()
    lines = text.splitlines()
    side_by_side = lines[lines.index(next(x for x in lines if x.startswith("ours and the"))) + 1 :]
    assert side_by_side[0].split() == ["stage", "ours", *PEERS]
    for name in PEERS:
        assert f"peer {name} (random weights): " in text
    inference = next(line for line in side_by_side if line.startswith("inference "))
    assert inference.split()[1] == "-"  # a stage ours does not have
    assert len(inference.split("/")) == 3  # median / p95 of each peer
    png = tmp_path / "bench.png"
    assert png.stat().st_size > 0
    assert cv2.imread(str(png)).shape[1] > 1000  # three panels side by side


def test_several_reference_weights_are_parsed_and_a_single_one_is_a_tuple(app):
    args = app.parser().parse_args(
        ["bench", "--reference", "--reference-weights", "a/peer.pt", *PEERS, "--mode", "latency"]
    )
    assert args.reference_weights == ["a/peer.pt", *PEERS] and args.mode == "latency"
    assert app.parser().parse_args(["bench"]).reference_weights == ["yolo11n-pose.pt"]
    with pytest.raises(SystemExit):
        app.parser().parse_args(["bench", "--reference-weights"])  # at least one

    assert BenchConfig().reference_weights == ("yolo11n-pose.pt",)
    assert BenchConfig(reference_weights="x.pt").reference_weights == ("x.pt",)
    assert BenchConfig(reference_weights=Path("x.pt")).reference_weights == (Path("x.pt"),)
    listed = BenchConfig(reference_weights=list(PEERS))
    assert listed.reference_weights == PEERS and hash(listed) == hash(
        BenchConfig(reference_weights=PEERS)
    )
    with pytest.raises(ValueError, match="at least one"):
        BenchConfig(reference_weights=())


def test_a_missing_second_peer_stops_the_run_before_any_timing(tmp_path, options, pipeline, app,
                                                               caplog):  # fmt: skip
    missing = tmp_path / "missing-peer.pt"
    config = BenchConfig(
        frames=1, warmup=0, out=tmp_path / "out", reference=True,
        reference_weights=("yolo11n-pose.yaml", missing),
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="reference weights '.*missing-peer.pt' not found"):
        run_benchmark(options, config, pipeline=pipeline, table=io.StringIO())
    assert not (tmp_path / "out").exists()  # made just before timing starts

    argv = ["bench", "--reference", "--reference-weights", "yolo11n-pose.yaml", str(missing),
            "--device", "cpu", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert app.main(argv) == 2
    assert "missing-peer.pt' not found" in caplog.text
    assert not (tmp_path / "cli").exists()


def test_a_benchmark_of_the_demo_weights_opens_with_the_notice(tmp_path):
    demo = PipelineSpec(
        pose=WEIGHTS_DIR / "demo-ccm-mobilenetv2-128x96.safetensors",
        detector=WEIGHTS_DIR / "demo-yolo11n-person.pt",
        device="cpu",
        detection=DetectorConfig(imgsz=320),
    )
    table = io.StringIO()
    config = BenchConfig(source=VTEST_SHORT, frames=2, warmup=1, out=tmp_path)
    report = run_benchmark(demo, config, table=table)

    assert json.loads((tmp_path / "bench.json").read_text())["demo_weights"] == DEMO_NOTICE
    assert table.getvalue().splitlines()[0] == DEMO_NOTICE
    assert "python app.py weights fetch --recommended" in report["demo_weights"]


def test_people_override_takes_top_n_or_tiles_n():
    boxes = torch.tensor([[0, 0, 10, 20], [5, 5, 15, 25], [30, 30, 40, 50.0]])
    scores = torch.tensor([0.9, 0.5, 0.2])
    found = Detections(boxes, scores)
    frame = Frame(0, 0.0, np.zeros((240, 320, 3), np.uint8), 0.0)
    top, top_scores = PeopleOverride(fixed=2)(frame, found)
    assert torch.equal(top, boxes[:2]) and torch.equal(top_scores, scores[:2])

    tiled, tiled_scores = PeopleOverride(fixed=5)(frame, found)
    assert torch.equal(tiled, tiled_boxes(5, 240, 320)) and torch.equal(tiled_scores, torch.ones(5))

    passthrough = PeopleOverride()
    assert passthrough(frame, found) is found and passthrough.detected == [3]

    truth = [torch.zeros(1, 4), torch.ones(2, 4)]
    ground = PeopleOverride(ground_truth=truth)
    later = Frame(5, 0.5, frame.image, 0.0)  # the clip's frame 1 on its third pass
    assert torch.equal(ground(later, found).boxes, truth[1])


def test_tiled_boxes_are_inside_the_frame_and_disjoint():
    boxes = tiled_boxes(7, 1080, 1920)
    assert boxes.shape == (7, 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 1920).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 1080).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # 7 people on a 1920x1080 frame: a 5 x 2 grid of 384 x 540 cells, boxes 80% x 90% of a cell.
    assert boxes[0].tolist() == pytest.approx([38.4, 27.0, 345.6, 513.0])
    assert boxes[6].tolist() == pytest.approx([422.4, 567.0, 729.6, 1053.0])
    lo = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    hi = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = (hi - lo).clamp(min=0).prod(-1)
    assert torch.equal(overlap > 0, torch.eye(7, dtype=torch.bool))


def test_ground_truth_boxes_become_corners_and_sizes_are_checked(tmp_path):
    path = tmp_path / "gt.json"
    frame = [{"bbox": [10.0, 20.0, 30.0, 40.0]}]
    path.write_text(json.dumps({"width": 64, "height": 48, "frames": [frame, []]}))
    boxes = load_ground_truth_boxes(path, 64, 48)
    assert [b.shape for b in boxes] == [(1, 4), (0, 4)]
    assert boxes[0].tolist() == [[10.0, 20.0, 40.0, 60.0]]
    with pytest.raises(ValueError, match="64x48 video but the source is 320x240"):
        load_ground_truth_boxes(path, 320, 240)
    path.write_text(json.dumps({"frames": []}))
    with pytest.raises(ValueError, match="not a train.synthetic ground-truth file"):
        load_ground_truth_boxes(path, 64, 48)
    with pytest.raises(FileNotFoundError, match="ground-truth file not found"):
        load_ground_truth_boxes(tmp_path / "missing.json", 64, 48)


def test_bad_config_and_missing_inputs_are_refused(tmp_path, options, pipeline):
    with pytest.raises(ValueError, match="not both"):
        BenchConfig(fixed_people=3, people_from_gt=tmp_path / "gt.json")
    with pytest.raises(ValueError, match="unknown mode"):
        BenchConfig(mode="fast")
    with pytest.raises(ValueError, match="frames must be >= 1"):
        BenchConfig(frames=0)
    with pytest.raises(FileNotFoundError, match="benchmark source not found"):
        run_benchmark(options, BenchConfig(source=tmp_path / "nope.mp4", out=tmp_path), pipeline)
    config = BenchConfig(frames=1, warmup=0, out=tmp_path, reference=True)  # yolo11n-pose.pt
    with pytest.raises(FileNotFoundError, match="reference weights 'yolo11n-pose.pt' not found"):
        run_benchmark(options, config, pipeline=pipeline, table=io.StringIO())


def test_cli_bench_refuses_buckets_that_are_not_increasing(tmp_path):
    command = [sys.executable, str(ROOT / "app.py"), "bench", "--batch-buckets", "8,4"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "buckets must be increasing" in result.stderr


def test_cli_bench_exits_zero_and_writes_the_report(tmp_path, pose_checkpoint):
    command = [sys.executable, str(ROOT / "app.py"), "bench", "--frames", "5", "--warmup", "1",
               "--out", str(tmp_path / "bench"), "--pose", str(pose_checkpoint),
               "--detector", "yolo11n.yaml", "--det-conf", "0", "--det-max", "3",
               "--det-size", "320", "--device", "cpu", "--fixed-people", "2",
               "--batch-buckets", "2,4", "--sync-timing"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert report["frames"] == 5 and report["people"]["per_frame"] == 2.0
    assert report["profile"]["pose"]["batch_buckets"] == [2, 4]
    assert report["config"]["pipeline"]["pipeline"]["sync_timing"] is True
    assert report["graphs_compiled_after_warmup"] == 0
    assert report["host_syncs_per_frame"] is None and report["device"]["peak_memory_mb"] is None
    assert "end-to-end" in result.stdout and "fixed at 2" in result.stdout
