"""ccm-pose: real-time multi-person pose estimation for video.

    python app.py video [IN ...] [--out DIR]   render poses into videos and write JSON Lines
    python app.py ui [--port N]                browser demo: live webcam and video upload
    python app.py bench [--source FILE]        time every stage and the whole loop
    python app.py weights list|fetch|import|verify   known checkpoints, downloads, conversion

Every command runs with no flags on the bundled demo clip (realtime/samples/synthetic_walk.mp4)
and the demo weights in weights/; `python app.py CMD --help` explains each option.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from realtime.offline import configure_offline

configure_offline()  # before ultralytics or gradio is imported

from ccm.refine import DECODE_METHODS  # noqa: E402
from realtime.assemble import PipelineOptions, build_pipeline  # noqa: E402
from realtime.detector import DetectorConfig  # noqa: E402
from realtime.engine import BACKENDS, EngineConfig  # noqa: E402
from realtime.pipeline import NMS_METHODS, PipelineConfig  # noqa: E402
from realtime.samples import SYNTHETIC_WALK  # noqa: E402
from realtime.temporal import METHODS as TEMPORAL_METHODS  # noqa: E402
from realtime.temporal import TemporalConfig  # noqa: E402
from realtime.weights import add_weights_commands  # noqa: E402

logger = logging.getLogger("ccm-pose")


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("models")
    models.add_argument(
        "--pose",
        type=Path,
        help="pose checkpoint (.safetensors); default: the best verified one in weights/",
    )
    models.add_argument(
        "--detector",
        type=Path,
        help="YOLO detection weights (.pt, or a model .yaml); default: a verified one in weights/",
    )
    models.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if present)"
    )
    models.add_argument(
        "--backend", choices=BACKENDS, default="eager", help="how the pose network runs"
    )
    models.add_argument(
        "--half", action="store_true", help="fp16 on CUDA for the pose network and detector"
    )
    refine = parser.add_argument_group("refinement (paper Sec. 5)")
    refine.add_argument("--no-flip", action="store_true", help="turn the flip test off (faster)")
    refine.add_argument(
        "--decoder", choices=DECODE_METHODS, default="parabola", help="sub-pixel decoder (SOA)"
    )
    refine.add_argument(
        "--blur", type=int, default=11, help="Gaussian filter size on heatmaps (GF); 0 = off"
    )
    refine.add_argument(
        "--ssp-alpha", type=float, help="sub-pixel shift of flipped heatmaps; default: the model's"
    )
    refine.add_argument(
        "--nms", choices=NMS_METHODS, default="softnms", help="merging of duplicate detections"
    )
    refine.add_argument(
        "--nms-threshold",
        type=float,
        default=0.9,
        help="OKS above which two poses count as one person (lower merges more)",
    )
    detect = parser.add_argument_group("detection")
    detect.add_argument(
        "--det-every",
        type=int,
        default=1,
        help="run the detector every N frames; poses give boxes in between",
    )
    detect.add_argument("--det-conf", type=float, default=0.3, help="detector confidence threshold")
    detect.add_argument("--det-iou", type=float, default=0.6, help="detector NMS IoU threshold")
    detect.add_argument("--det-max", type=int, default=100, help="most people per frame")
    detect.add_argument(
        "--min-score",
        type=float,
        default=0.05,
        help="drop people scored below this (detector score x mean confident keypoint score)",
    )
    detect.add_argument(
        "--det-size",
        type=int,
        help="detector input size (multiple of 32); default: the size its weights were trained "
        "at (640 for the COCO YOLO models)",
    )
    track = parser.add_argument_group("tracking")
    track.add_argument(
        "--temporal",
        choices=TEMPORAL_METHODS,
        default="kalman",
        help="temporal fusion across frames",
    )


def pipeline_options(args: argparse.Namespace) -> PipelineOptions:
    return PipelineOptions(
        pose=args.pose,
        detector=args.detector,
        device=args.device,
        engine=EngineConfig(
            backend=args.backend,
            half=args.half,
            flip_test=not args.no_flip,
            flip_alpha=args.ssp_alpha,
            decoder=args.decoder,
            blur_kernel=args.blur,
        ),  # fmt: skip
        detection=DetectorConfig(
            conf=args.det_conf,
            iou=args.det_iou,
            imgsz=args.det_size,
            max_det=args.det_max,
            half=args.half,
        ),
        pipeline=PipelineConfig(
            det_every=args.det_every,
            nms=args.nms,
            nms_threshold=args.nms_threshold,
            min_pose_score=args.min_score,
        ),
        temporal=TemporalConfig(method=args.temporal),
    )


def run_video(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from realtime.batch import expand_inputs, process_video
    from realtime.render import render_frame

    inputs = expand_inputs(args.inputs or [SYNTHETIC_WALK])
    if not inputs:
        logger.error("no input videos matched %s", args.inputs)
        return 2
    pipeline = build_pipeline(pipeline_options(args))
    failed = 0
    with tqdm(total=len(inputs), desc="videos", unit="video", position=0) as overall:
        for source in inputs:
            with tqdm(desc=source.name, unit="frame", position=1, leave=False) as bar:

                def progress(done: int, total: int | None, bar=bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                report = process_video(
                    source, args.out, pipeline, render_frame, progress, args.skip_existing
                )
            overall.update(1)
            if report.error:
                failed += 1
                tqdm.write(f"FAILED {source}: {report.error}")
            elif report.skipped:
                tqdm.write(f"skipped {source}: {report.video} and {report.jsonl} exist")
            else:
                done = f"{report.frames} frames, {report.fps:.1f} fps"
                tqdm.write(f"{source} -> {report.video}, {report.jsonl} ({done})")
    if failed:
        tqdm.write(f"{failed} of {len(inputs)} inputs failed")
    return 1 if failed else 0


def run_ui(args: argparse.Namespace) -> int:
    from realtime.ui import launch

    launch(
        pipeline_options(args), port=args.port, share=args.share, max_upload_mb=args.max_upload_mb
    )
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from realtime.bench import BenchConfig, run_benchmark

    config = BenchConfig(
        source=args.source, frames=args.frames, warmup=args.warmup, mode=args.mode, out=args.out,
        reference=args.reference, reference_weights=args.reference_weights,
        people_from_gt=args.people_from_gt, fixed_people=args.fixed_people,
    )  # fmt: skip
    run_benchmark(pipeline_options(args), config)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = root.add_subparsers(dest="command", required=True)

    video = commands.add_parser(
        "video",
        help="render poses into videos, write JSON Lines",
        description="For each input clip.mp4 writes OUT/clip.mp4 (rendered, H.264, source frame "
        "rate and audio) and OUT/clip.jsonl (one line of poses per frame, image pixels). A bad "
        "input is reported and skipped; the exit code is 1 if any input failed.",
    )
    video.add_argument(
        "inputs",
        nargs="*",
        help="video files, folders or glob patterns (default: the bundled demo clip)",
    )
    video.add_argument(
        "--out", type=Path, default=Path("out"), help="output folder (default: out/)"
    )
    video.add_argument(
        "--skip-existing", action="store_true", help="skip inputs whose two outputs already exist"
    )
    add_pipeline_arguments(video)
    video.set_defaults(run=run_video)

    ui = commands.add_parser("ui", help="Gradio browser demo on 127.0.0.1")
    ui.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    ui.add_argument(
        "--share", action="store_true", help="also open a public share link (off by default)"
    )
    ui.add_argument("--max-upload-mb", type=int, default=500, help="largest video upload accepted")
    add_pipeline_arguments(ui)
    ui.set_defaults(run=run_ui)

    bench = commands.add_parser("bench", help="time every stage and the whole loop")
    bench.add_argument(
        "--source",
        type=Path,
        default=SYNTHETIC_WALK,
        help="video to time (default: the bundled demo clip)",
    )
    bench.add_argument(
        "--frames", type=int, default=200, help="frames timed after warm-up (loops the clip)"
    )
    bench.add_argument("--warmup", type=int, default=20, help="frames run before timing starts")
    bench.add_argument(
        "--mode",
        choices=("throughput", "latency"),
        default="throughput",
        help="throughput: a file as fast as possible, render and encode on; "
        "latency: one frame at a time, as from a camera",
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench"), help="folder for the JSON report and PNG chart"
    )
    bench.add_argument(
        "--reference", action="store_true", help="also time the ultralytics YOLO-pose predictor"
    )
    bench.add_argument(
        "--reference-weights",
        default="yolo11n-pose.pt",
        help="YOLO-pose weights for --reference: a local .pt, or a shipped yaml such as "
        "yolo11n-pose.yaml (random weights, timing only)",
    )
    people = bench.add_mutually_exclusive_group()
    people.add_argument(
        "--people-from-gt",
        type=Path,
        metavar="FILE",
        help="take each frame's person boxes from a train.synthetic video's ground-truth JSON "
        "(the detector still runs and is timed)",
    )
    people.add_argument(
        "--fixed-people",
        type=int,
        metavar="N",
        help="N people per frame: the detector's top N boxes, or N tiled boxes when it finds "
        "fewer (for random-weight detectors)",
    )
    add_pipeline_arguments(bench)
    bench.set_defaults(run=run_bench)

    add_weights_commands(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
