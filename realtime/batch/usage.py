"""What a user can get wrong, and how a command stops: one clear line, never a traceback.

- `UsageError`: a problem with a flag or the environment the user can fix; `app.py` prints its
  message as one line and exits 2. `check_device`, `check_out_dir` and `load_pipeline` raise it
  with the flag named and what to do.
- `Interrupted`: SIGINT (Ctrl-C) or SIGTERM, raised in the main thread by the handlers
  `install_signal_handlers` sets, so every `with` block on the way out removes its unfinished
  files; a second signal while that clean-up runs is ignored.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from realtime.batch.report import describe
from realtime.stream.assemble import PipelineSpec, build_live_pipeline, build_pipeline
from realtime.stream.pipeline import PosePipeline
from realtime.weights.verify import UntrustedWeightsError

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A problem the user can fix; main() prints its message as one line and exits 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised in the main thread so every `with` cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name


def install_signal_handlers() -> dict[int, object]:
    """Turn the first SIGINT / SIGTERM into `Interrupted`; later ones are ignored so the
    clean-up they interrupt can finish. Returns the previous handlers."""
    stopping = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise Interrupted(signum)

    previous: dict[int, object] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def add_output_arguments(parser: argparse.ArgumentParser, resumable: bool) -> None:
    """`--out`, `--overwrite` and (`video`) `--skip-existing`."""
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    if resumable:
        parser.add_argument(
            "--skip-existing",
            action="store_true",
            help="skip inputs whose two outputs already exist and were made from the same file",
        )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs under the same names that another input (or an earlier run of "
        "other inputs) left; without it they are kept and that input fails",
    )


def check_device(device: str) -> str:
    """`--device` as torch reads it, or a UsageError saying what to use instead."""
    import torch

    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                f"{'no CUDA build' if torch.version.cuda is None else 'no usable GPU'}); "
                "use --device cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(
                f"--device {device}: this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif parsed.type != "cpu":
        raise UsageError(f"--device {device}: only cpu and cuda devices are supported")
    return device


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file is in the way; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create the folder: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: the folder is not writable; choose another with --out")


def load_pipeline(options: PipelineSpec, live: bool = False) -> PosePipeline:
    """`build_pipeline` (`build_live_pipeline` for live sources), with a failure to load either
    model turned into one line that names the flag to fix."""
    try:
        return build_live_pipeline(options)[0] if live else build_pipeline(options)
    except (KeyboardInterrupt, UsageError):
        raise
    except UntrustedWeightsError as err:
        raise UsageError(f"--detector {err}") from None
    except Exception as err:
        logger.debug("loading the models failed", exc_info=True)
        if _raised_in(err, ("realtime/detect/detector.py", "ultralytics")):
            flag = f"--detector {options.detector}" if options.detector else "the default detector"
            hint = "give YOLO detection weights (.pt) or a model .yaml"
        else:
            flag = f"--pose {options.pose}" if options.pose else "the default pose checkpoint"
            hint = "give a pose checkpoint (.safetensors); see `app.py weights list`"
        raise UsageError(f"{flag}: cannot load it: {describe(err)}; {hint}") from err


def _raised_in(err: BaseException, places: tuple[str, ...]) -> bool:
    tb = err.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
        if any(place in filename for place in places):
            return True
        tb = tb.tb_next
    return False
