"""The pipeline's command-line flags (`video`, `images`, `ui`, `bench`) and the `PipelineSpec`
they make. Every default is the stage config's own, so the flags and the Python API agree."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from ccm.nms import NMS_METHODS
from ccm.refine import DECODE_METHODS
from realtime.detect.detector import DETECTOR_BACKENDS, DetectorConfig
from realtime.device import resolve_device
from realtime.pose.config import BACKENDS, PRECISIONS, PoseStageConfig
from realtime.stream.assemble import PipelineSpec
from realtime.stream.pipeline import FILE_DET_EVERY, LIVE_FLIPS, PipelineConfig
from realtime.temporal.fusion import METHODS as TEMPORAL_METHODS
from realtime.temporal.fusion import TemporalConfig


def number(
    kind: type[int] | type[float] = float,
    low: float | None = None,
    high: float | None = None,
    *,
    odd_or_zero: bool = False,
    multiple_of: int | None = None,
) -> Callable[[str], int | float]:
    """An argparse `type` that reads a finite number in [low, high] (either end may be open),
    so a bad value stops at parse time with the flag's name (`argument --min-score: ...`)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{'n integer' if kind is int else ' number'}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            span = (
                f"in [{low}, {high}]"
                if low is not None and high is not None
                else (f">= {low}" if low is not None else f"<= {high}")
            )
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {span}")
        if odd_or_zero and value != 0 and value % 2 == 0:
            raise argparse.ArgumentTypeError(f"{text} is even: must be odd (or 0 = off)")
        if multiple_of and value % multiple_of:
            raise argparse.ArgumentTypeError(f"{text} is not a multiple of {multiple_of}")
        return value

    parse.__name__ = kind.__name__
    return parse


FRACTION, COUNT = number(float, 0, 1), number(int, 1)  # flag types: checked at parse time
VERBOSE_HELP = "log debug messages, and show the traceback of any error (default: off)"


def add_pipeline_arguments(parser: argparse.ArgumentParser, temporal: bool = True) -> None:
    """Every stage's flags; each default is the stage config's own."""
    # fmt: off
    pose, pipe, det = PoseStageConfig(), PipelineConfig(), DetectorConfig()
    # Also after the command (`app.py video x.mp4 -v`); SUPPRESS keeps the top-level value.
    verbose = {"action": "store_true", "default": argparse.SUPPRESS, "help": VERBOSE_HELP}
    parser.add_argument("-v", "--verbose", **verbose)
    models = parser.add_argument_group("models")
    models.add_argument("--pose", type=Path, help="pose checkpoint (.safetensors); default: the "
                        "best verified one in weights/")
    models.add_argument("--detector", type=Path, help="YOLO detection weights (.pt, or a model "
                        ".yaml); default: a verified one in weights/")
    models.add_argument("--trust", action="store_true", help="load --detector / --reference-weights"
                        " files with no manifest hash: a .pt is unpickled, which runs any code "
                        "in it (default: off; known files and .yaml only)")
    models.add_argument("--device", default=PipelineSpec.device,
                        help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    models.add_argument("--backend", choices=BACKENDS, default=pose.backend,
                        help="how the networks run: openvino (both, CPU), eager (PyTorch), compile"
                        " (torch.compile) or tensorrt (CUDA) for the pose network with a PyTorch "
                        "detector; auto = openvino on the CPU, eager on CUDA")
    models.add_argument("--half", action="store_true",
                        help="fp16 on CUDA for the pose network and detector")
    models.add_argument("--precision", choices=PRECISIONS, default=pose.precision,
                        help="arithmetic of both networks: auto = bf16 on a CPU with AMX / "
                        "AVX512-BF16, fp16 on CUDA with --half, else fp32 (live sources, the "
                        "browser demo and bench --mode latency: int8 on a CPU); int8 = both "
                        "quantized for OpenVINO on the CPU, calibrated once on the bundled clips "
                        "(a third faster a live frame, same AP: see BENCHMARKS.md)")
    models.add_argument("--batch-size", type=COUNT, default=pipe.batch_size, help="frames of a "
                        "file that go through the detector and the pose network together")
    refine = parser.add_argument_group("refinement (paper Sec. 5)")
    refine.add_argument("--no-flip", action="store_true", help="turn the flip test off (faster)")
    refine.add_argument("--live-flip", choices=LIVE_FLIPS, default=pipe.live_flip,
                        help="which frames of a camera or stream get the flip test: always, "
                        "between detections (with --det-every > 1), alternate frames, never "
                        "(each step faster, and less accurate: see BENCHMARKS.md)")
    refine.add_argument("--decoder", choices=DECODE_METHODS, default=pose.decoder,
                        help="sub-pixel decoder (SOA)")
    refine.add_argument("--blur", type=number(int, 0, odd_or_zero=True), default=pose.blur_kernel,
                        help="Gaussian filter size on heatmaps (GF); 0 = off")
    refine.add_argument("--ssp-alpha", type=number(),
                        help="sub-pixel shift of flipped heatmaps; default: the model's")
    refine.add_argument("--nms", choices=NMS_METHODS, default=pipe.nms,
                        help="merging of duplicate detections")
    refine.add_argument("--nms-threshold", type=FRACTION, default=pipe.nms_threshold,
                        help="OKS above which two poses count as one person (lower merges more)")
    detect = parser.add_argument_group("detection")
    detect.add_argument("--det-every", type=COUNT, default=pipe.det_every,
                        help="run the detector every N frames: a file's frames in between take "
                        "boxes interpolated from the detections on either side, a camera's boxes "
                        f"predicted from its tracks (default: every {FILE_DET_EVERY} frames for a "
                        "file, every frame for a camera)")
    detect.add_argument("--det-conf", type=FRACTION, default=det.conf,
                        help="detector confidence threshold")
    detect.add_argument("--det-iou", type=FRACTION, default=det.iou, help="detector NMS IoU "
                        "threshold")
    detect.add_argument("--det-max", type=COUNT, default=det.max_det, help="most people per frame")
    detect.add_argument("--min-score", type=FRACTION, default=pipe.min_pose_score, help="drop "
                        "people scored below this (detector score x mean confident keypoint score)")
    detect.add_argument("--det-size", type=number(int, 32, multiple_of=32), help="detector input "
                        "size (multiple of 32); default: the size its weights were trained at (640"
                        " for the COCO YOLO models)")
    if not temporal:
        parser.set_defaults(temporal="none")
        return
    track = parser.add_argument_group("tracking")
    track.add_argument("--temporal", choices=TEMPORAL_METHODS, default=TemporalConfig().method,
                       help="temporal fusion across frames")
    # fmt: on


def pipeline_options(args: argparse.Namespace) -> PipelineSpec:
    """The flags as a `PipelineSpec`; the engine config gets the resolved device, so `--half`
    and `--backend tensorrt` are checked against it (`--half` is dropped on the CPU), the spec
    keeps `--device` as given (torchrun ranks pick their own GPU from "auto")."""
    device = str(resolve_device(args.device))
    return PipelineSpec(
        pose=args.pose,
        detector=args.detector,
        device=args.device,
        engine=PoseStageConfig(
            backend=args.backend,
            device=device,
            half=args.half and device != "cpu",
            precision=args.precision,
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
            half=args.half or args.precision == "fp16",
            precision="auto" if args.precision == "fp16" else args.precision,
            backend=args.backend if args.backend in DETECTOR_BACKENDS else "torch",
            trust=args.trust,
        ),
        pipeline=PipelineConfig(
            det_every=args.det_every,
            live_flip=args.live_flip,
            nms=args.nms,
            nms_threshold=args.nms_threshold,
            min_pose_score=args.min_score,
            batch_size=args.batch_size,
        ),
        temporal=TemporalConfig(method=args.temporal),
    )
