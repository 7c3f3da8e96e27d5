"""ccm-pose: real-time multi-person pose estimation for video.

    python app.py video [IN ...] [--out DIR]   render poses into videos and write JSON Lines
    python app.py images IN ... [--out DIR]    pose still images: JSON Lines, COCO results
    python app.py ui [--port N]                browser demo: live webcam and video upload
    python app.py bench [--source FILE]        time every stage and the whole loop
    python app.py weights list|fetch|import|verify   known checkpoints, downloads, conversion

Every command but `images` runs with no flags on the bundled demo clip
(realtime/samples/synthetic_walk.mp4) and the demo weights in weights/; `python app.py CMD --help`
explains each option and shows its default. `app.py video ... --ray [ADDRESS]` (and `images`)
runs the batch as a Ray job, one worker per GPU, locally or on a cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __name__ == "__main__":  # Ctrl-C / SIGTERM while torch loads: one line, not a traceback

    def _starting(signum: int, frame: object) -> None:
        print(f"stopped by {signal.Signals(signum).name} while starting", file=sys.stderr)
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, _starting), signal.signal(signal.SIGTERM, _starting)

from realtime.batch.live_cli import add_live_arguments  # noqa: E402
from realtime.batch.ray_pool import add_ray_arguments, ray_options  # noqa: E402
from realtime.batch.report import describe  # noqa: E402
from realtime.batch.usage import (  # noqa: E402
    Interrupted,
    UsageError,
    add_output_arguments,
    check_device,
    install_signal_handlers,
)
from realtime.bench.config import BenchConfig, parse_buckets  # noqa: E402
from realtime.samples import SYNTHETIC_WALK  # noqa: E402
from realtime.stream.flags import (  # noqa: E402
    COUNT,
    VERBOSE_HELP,
    add_pipeline_arguments,
    number,
    pipeline_options,
)
from realtime.ui.settings import UiConfig  # noqa: E402
from realtime.weights.cli import add_weights_commands  # noqa: E402

if TYPE_CHECKING:
    pass

logger = logging.getLogger("ccm-pose")


def run_video(args: argparse.Namespace) -> int:
    from realtime.batch.cli import run_videos
    from realtime.batch.live_cli import live_specs, run_live_command

    specs = args.inputs or [SYNTHETIC_WALK]
    if live_specs(specs):
        return run_live_command(specs, args, pipeline_options(args))
    return run_videos(
        specs,
        args.out,
        pipeline_options(args),
        args.skip_existing,
        overwrite=args.overwrite,
        ray=ray_options(args),
    )


def run_images(args: argparse.Namespace) -> int:
    from realtime.batch.cli import run_images

    return run_images(
        args.inputs,
        args.out,
        pipeline_options(args),
        overwrite=args.overwrite,
        ray=ray_options(args),
    )


def run_ui(args: argparse.Namespace) -> int:
    from realtime.ui.page import launch

    options = pipeline_options(args)
    launch(options, args.port, args.share, UiConfig(max_upload_mb=args.max_upload_mb))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from realtime.bench.run import run_benchmark

    config = BenchConfig(
        source=args.source, frames=args.frames, warmup=args.warmup, mode=args.mode, out=args.out,
        reference=args.reference, reference_weights=tuple(args.reference_weights),
        people_from_gt=args.people_from_gt, fixed_people=args.fixed_people,
    )  # fmt: skip
    options = pipeline_options(args)
    buckets = args.batch_buckets or options.engine.batch_buckets
    run_benchmark(dataclasses.replace(
        options, engine=dataclasses.replace(options.engine, batch_buckets=buckets),
        pipeline=dataclasses.replace(options.pipeline, sync_timing=args.sync_timing),
    ), config)  # fmt: skip
    return 0


class HelpFormatter(argparse.HelpFormatter):
    """Ends every option's help with its default, unless the help already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default is argparse.SUPPRESS
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default is None:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class RootHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level help: the module docstring as written."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="app.py", description=__doc__, formatter_class=RootHelpFormatter)
    root.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = root.add_subparsers(dest="command", required=True, parser_class=Parser)

    video = commands.add_parser(
        "video",
        help="render poses into videos, write JSON Lines",
        description="For each input clip.mp4 writes OUT/clip.mp4 (rendered, H.264, source frame "
        "rate and audio, turned as its rotation tag says) and OUT/clip.jsonl (one line of poses "
        "per frame, image pixels). Outputs mirror the inputs' paths relative to the folder (or "
        "common parent) they came from, so two inputs never share an output. A bad input (also "
        "a cut-off file, or an argument that matches nothing) is reported and skipped; the "
        "exit code is 1 if any input failed, 130 / 143 after Ctrl-C / SIGTERM. With --ray the "
        "inputs go to a Ray job, under torchrun they are split across the processes.",
    )
    video.add_argument(
        "inputs",
        nargs="*",
        help="video files, folders (searched recursively) or glob patterns; an existing path is "
        "always taken literally. Or live sources: a camera index (0), a camera device "
        "(/dev/video0), stream URLs (rtsp://cam/stream, rtsps://, rtmp://, "
        "http(s)://host/live.ts or .m3u8 or MJPEG, udp://@:1234, tcp://host:port, srt://); "
        "several at once share the models (default: the bundled demo clip)",
    )
    add_output_arguments(video, resumable=True)
    add_live_arguments(video)
    add_pipeline_arguments(video)
    add_ray_arguments(video)
    video.set_defaults(run=run_video)

    images = commands.add_parser(
        "images",
        help="pose still images, write JSON Lines, COCO results and rendered images",
        description="Poses each image on its own (no tracking) and writes OUT/poses.jsonl (one "
        'line per image: {"image": path relative to its input folder, "width", "height", '
        '"poses"}), OUT/coco_results.json (COCO keypoint results; image_id = line number in '
        "poses.jsonl), OUT/coco_images.json and the rendered images under the same relative "
        "paths. PNG (8/16 bit, gray, RGBA), JPEG, WebP, BMP and TIFF; EXIF orientation is "
        "applied. An unreadable image is reported and skipped; the exit code is 1 if any failed.",
    )
    images.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) "
                        "or glob patterns; an existing path is always taken literally")  # fmt: skip
    add_output_arguments(images, resumable=False)
    add_pipeline_arguments(images, temporal=False)
    add_ray_arguments(images)
    images.set_defaults(run=run_images)

    ui = commands.add_parser("ui", help="Gradio browser demo on 127.0.0.1")
    ui.add_argument(
        "--port", type=number(int, 1, 65535), help="port (default: $GRADIO_SERVER_PORT, else 7860)"
    )
    ui.add_argument("--share", action="store_true", help="also open a public share link")
    ui.add_argument(
        "--max-upload-mb",
        type=COUNT,
        default=UiConfig.max_upload_mb,
        help="largest video upload accepted",
    )
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
        "--frames", type=COUNT, default=200, help="frames timed after warm-up (loops the clip)"
    )
    bench.add_argument(
        "--warmup", type=number(int, 0), default=20, help="frames run before timing starts"
    )
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
        "--reference",
        action="store_true",
        help="also time the ultralytics YOLO-pose predictor, each of --reference-weights",
    )
    bench.add_argument(
        "--reference-weights",
        nargs="+",
        default=list(BenchConfig.reference_weights),
        metavar="W",
        help="YOLO-pose weights for --reference, one or more (each timed after ours, one after "
        "the other, on the same frames): a local .pt, or a shipped yaml such as "
        "yolo11n-pose.yaml or yolo26n-pose.yaml (random weights, timing only) (default: "
        f"{' '.join(map(str, BenchConfig.reference_weights))})",
    )
    people = bench.add_mutually_exclusive_group()
    people.add_argument(
        "--people-from-gt",
        type=Path,
        metavar="FILE",
        help="take each frame's person boxes from a train.synthetic video's ground-truth JSON "
        "(the detector still runs and is timed; default: the detector's boxes)",
    )
    people.add_argument(
        "--fixed-people",
        type=COUNT,
        metavar="N",
        help="N people per frame: the detector's top N boxes, or N tiled boxes when it finds "
        "fewer (for random-weight detectors; default: as many as are found)",
    )
    bench.add_argument(
        "--batch-buckets",
        type=parse_buckets,
        help="people per compiled pose batch, e.g. 8 or 8,32 (only these are compiled and warmed "
        "up; more people run in chunks of the largest); default: 1,2,4,8,16,32",
    )
    bench.add_argument(
        "--sync-timing",
        action="store_true",
        help="throughput mode: wait for the device after each stage, so per-stage times on CUDA "
        "are run times, not launch times (latency mode always does)",
    )
    add_pipeline_arguments(bench)
    bench.set_defaults(run=run_bench)

    add_weights_commands(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet = os.environ.get("RANK", "0") not in ("", "0")  # torchrun: rank 0 tells what it loads
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    previous = install_signal_handlers()
    try:
        if hasattr(args, "device") and getattr(args, "ray", None) is None:
            check_device(args.device)  # on Ray, the workers' machines are the ones that count
        return args.run(args)
    except Interrupted as stop:
        logger.error("stopped by %s", stop.name)
        return 128 + stop.signum
    except (UsageError, FileNotFoundError, ValueError) as err:
        logger.debug("stopped", exc_info=True)
        logger.error("%s", err)
        return 2
    except Exception as err:  # anything else: one line, and the traceback with --verbose
        logger.debug("unexpected error", exc_info=True)
        hint = "" if args.verbose else " (run with --verbose to see where)"
        logger.error("%s%s", describe(err), hint)
        return 3
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
