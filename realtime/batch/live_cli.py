"""The live-source side of `app.py video`: its flags, and a run from parsed arguments.

add_live_arguments(video_parser)
if live_specs(args.inputs):
    code = run_live_command(args.inputs, args, pipeline_spec)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from realtime.batch.live import LiveRun, live_specs, run_live
from realtime.batch.usage import UsageError
from realtime.io.live import LiveOptions
from realtime.stream.assemble import PipelineSpec

__all__ = ["add_live_arguments", "live_specs", "run_live_command"]


def camera_size(text: str) -> tuple[int, int]:
    """A `--camera-size` value: "1280x720" -> (1280, 720)."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 1280x720")
    return int(width), int(height)


def add_live_arguments(parser: argparse.ArgumentParser) -> None:
    """The `live sources` flags of `app.py video`."""
    live = parser.add_argument_group(
        "live sources",
        "Cameras and streams run in real time: the newest frame, stale ones dropped. Outputs "
        "OUT/<source>-<UTC start>.mp4 and .jsonl (flushed per frame; each line also has "
        '"captured", wall-clock seconds). Ctrl-C, SIGTERM or the end of the stream finish '
        "the files; exit code 0 on a clean stop.",
    )
    live.add_argument(
        "--camera-size",
        type=camera_size,
        metavar="WxH",
        help="frame size asked of cameras (default: the camera's own)",
    )
    live.add_argument(
        "--camera-fps",
        type=float,
        metavar="FPS",
        help="frame rate asked of cameras (default: the camera's own)",
    )
    live.add_argument(
        "--reconnect",
        type=int,
        metavar="N",
        help="attempts to reopen a stream that dropped, stalled or changed size, with backoff "
        "(default: keep trying)",
    )
    live.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds a source may take to open, and go without data before it is reopened",
    )
    live.add_argument(
        "--segment",
        type=float,
        metavar="MINUTES",
        help="start a new pair of output files every MINUTES (default: one pair per run)",
    )
    live.add_argument(
        "--show",
        action="store_true",
        help="a window per source with the skeletons (q or Esc stops)",
    )


def run_live_command(
    specs: Sequence[str | Path], args: argparse.Namespace, options: PipelineSpec
) -> int:
    """`app.py video` when `specs` name live sources: every one of them must, and the flags
    must make sense (UsageError otherwise)."""
    live = live_specs(specs)
    if len(live) < len(specs):
        files = ", ".join(str(s) for s in specs if str(s) not in live)
        raise UsageError(f"live sources and files in one run: run {files} on its own")
    if args.reconnect is not None and args.reconnect < 0:
        raise UsageError(f"--reconnect {args.reconnect}: give 0 or more attempts")
    if not args.timeout > 0 or (args.segment is not None and not args.segment > 0):
        raise UsageError("--timeout and --segment: give a number above 0")
    source = LiveOptions(
        timeout=args.timeout,
        reconnect=args.reconnect,
        camera_size=args.camera_size,
        camera_fps=args.camera_fps,
    )
    segment_s = args.segment * 60 if args.segment is not None else None
    run = LiveRun(source=source, segment_s=segment_s, show=args.show)
    return run_live(live, args.out, options, run)
