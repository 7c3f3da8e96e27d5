"""A pool of Ray actors, one per GPU (or per N CPU cores), that load the models once and take
work from one queue: whole videos, or chunks of images.

    with connect(RayOptions(address="auto")):
        pool = WorkerPool(options, RayOptions(), jobs=len(work), out=out)
        for job, value in pool.run(work, "video"):   # (Job, the method's return value | Lost)
            ...

The queue hands the next job to whichever worker is free, so a worker that drew short videos
takes more of them; jobs are taken in the order given (the caller sorts them, largest first).
A worker that dies (killed, out of memory, its node lost) loses the job it held: its temporary
files are deleted and the job goes back to the front of the queue, for another worker, up to
`MAX_ATTEMPTS` times; a replacement worker is started wherever Ray finds room. Ray is imported
only here and only when a pool is used, so nothing else needs it installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccm.poses import FramePoses
from realtime.batch.images import ImageReport, pose_image
from realtime.batch.inputs import InputFile
from realtime.batch.usage import UsageError, load_pipeline
from realtime.batch.videos import Renderer, VideoReport, output_paths, process_video
from realtime.io.atomic_files import owner_tag, remove_parts_of
from realtime.render import render_frame
from realtime.stream.assemble import PipelineSpec

logger = logging.getLogger(__name__)

# Tries of one job before it counts as failed: a video that kills every worker it lands on
# (a decoder crash, memory) must not take the whole cluster down with it.
MAX_ATTEMPTS = 3
# How often the driver asks the busy workers how far they are, in seconds.
POLL_S = 0.5


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run on Ray.

    Attributes:
        address: None: the Ray instance of this machine (RAY_ADDRESS, or the one `ray start`
            began last), else one started for this command (Ray's rule); "auto" joins the
            cluster this machine belongs to; "ray://host:10001" connects as a Ray client.
        cpus_per_worker: CPU cores per worker (and its torch threads) when there is no GPU;
            with GPUs every worker holds one GPU.
    """

    address: str | None = None
    cpus_per_worker: int = 4


@dataclass
class Job:
    """One unit of work: a video (`items` of one) or a chunk of images, and its tries so far."""

    index: int
    items: list[InputFile]
    attempts: int = 0


@dataclass(frozen=True)
class Lost:
    """The job's worker died `attempts` times; `why` is Ray's last word on it."""

    why: str


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(
            '--ray: Ray is not installed here; install it with pip install -e ".[ray]"'
        ) from None
    return ray


@contextlib.contextmanager
def connect(options: RayOptions) -> Iterator[Any]:
    """Ray, initialised for the block (and shut down after, unless it was running already).

    Usage reporting is off unless the user turned it on; the signal handlers Ray's driver sets
    are put back, so Ctrl-C / SIGTERM still stop the command the way they always do."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    local = {"include_dashboard": False} if options.address is None else {}
    try:
        ray.init(options.address, configure_logging=False, log_to_driver=True, **local)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = options.address or "a local instance"
        raise UsageError(f"--ray {where}: cannot start or reach Ray: {err}") from None
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    try:
        yield ray
    finally:
        ray.shutdown()


class PoseWorker:
    """The body of one Ray actor: the models loaded once, then videos or image chunks.

    Paths it gets are absolute (a worker's working folder is not the driver's)."""

    def __init__(self, options: PipelineSpec, threads: int | None, render: Renderer) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.options, self.render = options, render
        self.pipeline = None
        self.done, self.total = 0, None

    def load(self) -> tuple[str, str | None]:
        """Load the models. Returns (how this process signs its temporary files, None), or
        (that, the one-line error) when a model cannot be loaded."""
        try:
            self.pipeline = load_pipeline(self.options)
        except UsageError as err:
            return owner_tag(), str(err)
        return owner_tag(), None

    def progress(self) -> tuple[int, int | None]:
        """(frames done, frames in all) of the video in hand."""
        return self.done, self.total

    def video(
        self, item: InputFile, out: Path, skip_existing: bool, overwrite: bool
    ) -> VideoReport:
        self.done, self.total = 0, None

        def progress(done: int, total: int | None) -> None:
            self.done, self.total = done, total

        return process_video(
            item.path,
            out,
            self.pipeline,
            self.render,
            progress,
            skip_existing,
            item.name,
            overwrite,
        )

    def images(
        self, items: list[InputFile], out: Path
    ) -> list[tuple[ImageReport, FramePoses | None]]:
        return [pose_image(item, out, self.pipeline, self.render) for item in items]


def _absolute(item: InputFile) -> InputFile:
    return dataclasses.replace(item, path=item.path.absolute(), root=item.root.absolute())


class WorkerPool:
    """Ray actors running `PoseWorker`, and the queue that feeds them (see the module doc)."""

    def __init__(
        self,
        options: PipelineSpec,
        ray_options: RayOptions,
        jobs: int,
        out: Path,
        render: Renderer = render_frame,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.ray = _ray()
        self.out = out.absolute()
        self.on_progress = on_progress
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        per = 1
        if gpus and options.device != "cpu":
            resources, device, threads, count = {"num_gpus": 1}, "cuda", None, gpus
        elif options.device.startswith("cuda"):
            raise UsageError(f"--device {options.device}: the Ray cluster has no GPU")
        else:
            cpus = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
            per = min(ray_options.cpus_per_worker, cpus)
            resources, device, threads, count = {"num_cpus": per}, "cpu", per, cpus // per
        self.size = max(1, min(count, jobs))
        # Two threads per actor: one runs the job, the other answers `progress`.
        actor = self.ray.remote(PoseWorker).options(max_concurrency=2, **resources)
        self._start = lambda: actor.remote(
            dataclasses.replace(options, device=device), threads, render
        )
        kind = "1 GPU" if device == "cuda" else f"{per} CPU core(s)"
        self.kind = f"{self.size} Ray worker(s) with {kind} each"

    def _launch(self, starting: dict[Any, Any]) -> None:
        actor = self._start()
        starting[actor.load.remote()] = actor  # the handle is kept: Ray ends unreferenced actors

    def _wait(self, refs: list[Any], count: int) -> list[Any]:
        """`ray.wait` for `count` of `refs`, at most `POLL_S`, in steps that sleep in Python:
        Ctrl-C or SIGTERM during a wait inside Ray comes out as a bare KeyboardInterrupt, and
        the command's handler would not learn which signal it was."""
        end = time.monotonic() + POLL_S
        while True:
            ready, _ = self.ray.wait(refs, num_returns=count, timeout=0)
            if len(ready) >= count or time.monotonic() >= end:
                return ready
            time.sleep(0.02)

    def _poll(self, busy: list[Any]) -> None:
        """Tell `on_progress` the frames done so far by the busy workers' videos in hand."""
        if self.on_progress is None or not busy:
            return
        refs = [actor.progress.remote() for actor in busy]
        ready = self._wait(refs, len(refs))
        done = 0
        for ref in ready:
            with contextlib.suppress(self.ray.exceptions.RayError):
                done += self.ray.get(ref)[0]
        self.on_progress(done)

    def run(self, jobs: Sequence[Job], method: str, *args: Any) -> Iterator[tuple[Job, Any]]:
        """Run `PoseWorker.<method>(item or items, out, *args)` for every job, in queue order
        as workers come free; yields (job, its return value) as each finishes, or (job, Lost)
        for a job whose worker died `MAX_ATTEMPTS` times. Kills the workers at the end, or
        when the caller stops early (Ctrl-C), deleting what they were writing."""
        ray = self.ray
        queue = deque(jobs)
        starting: dict[Any, Any] = {}  # load ref -> actor
        for _ in range(self.size):
            self._launch(starting)
        idle: list[Any] = []
        running: dict[Any, tuple[Any, Job]] = {}  # job ref -> (actor, job)
        owners: dict[int, str] = {}  # id(actor) -> the PID@HOST of its temporary files
        deaths_loading = 0
        try:
            while queue or running:
                while idle and queue:
                    actor, job = idle.pop(), queue.popleft()
                    items = [_absolute(item) for item in job.items]
                    payload = items[0] if method == "video" else items
                    running[getattr(actor, method).remote(payload, self.out, *args)] = (actor, job)
                ready = self._wait([*starting, *running], 1)
                for ref in ready:
                    if ref in starting:
                        actor = starting.pop(ref)
                        try:
                            owner, error = ray.get(ref)
                        except ray.exceptions.RayActorError as err:
                            deaths_loading += 1
                            if deaths_loading > MAX_ATTEMPTS * self.size:
                                raise UsageError(
                                    f"--ray: {deaths_loading} workers died while loading the "
                                    f"models: {_first_line(err)}"
                                ) from None
                            self._launch(starting)
                            continue
                        if error is not None:
                            raise UsageError(error)
                        owners[id(actor)] = owner
                        idle.append(actor)
                        continue
                    actor, job = running.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayActorError as err:
                        self._remove_parts(job, method, owners.pop(id(actor), None))
                        job.attempts += 1
                        names = ", ".join(str(item.path) for item in job.items[:3])
                        why = _first_line(err)
                        logger.warning("a Ray worker died during %s (try %d of %d): %s",
                                       names, job.attempts, MAX_ATTEMPTS, why)  # fmt: skip
                        if job.attempts >= MAX_ATTEMPTS:
                            yield job, Lost(_first_line(err))
                        else:
                            queue.appendleft(job)  # the front: it is among the longest
                        self._launch(starting)
                        continue
                    idle.append(actor)
                    yield job, value
                self._poll([actor for actor, _ in running.values()])
        finally:
            for actor in [*starting.values(), *idle]:
                ray.kill(actor)
            for actor, job in running.values():
                ray.kill(actor)
                self._remove_parts(job, method, owners.get(id(actor)))

    def _remove_parts(self, job: Job, method: str, owner: str | None) -> None:
        """Delete the temporary files a killed worker left for `job`: nothing of it remains
        (a final name is only ever written by a rename of a complete file)."""
        if owner is None:
            return
        for item in job.items:
            video = method == "video"
            for final in output_paths(item.name, self.out) if video else [self.out / item.name]:
                remove_parts_of(final, owner)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# ----------------------------------------------------------------------------- flags


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group('scale-out on Ray (pip install -e ".[ray]")')
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        type=ray_address,
        help="run the batch as a Ray job, one worker per GPU taking inputs from a shared queue: "
        "without ADDRESS on the Ray instance of this machine ($RAY_ADDRESS, or one `ray start` "
        "began), else on one started for the command; `auto` on the cluster this machine "
        "belongs to; ray://HOST:10001 on a remote cluster; the folders must be at the same "
        "paths everywhere (default: off)",
    )
    ray.add_argument(
        "--ray-cpus",
        type=int,
        default=4,
        metavar="N",
        help="CPU cores per Ray worker where the cluster has no GPU",
    )


def ray_address(value: str) -> str:
    """`--ray` ADDRESS, or an error for a value that is an input put after a bare `--ray`."""
    if value in ("local", "auto") or ":" in value:
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a Ray address (auto, ray://HOST:10001, HOST:6379); "
        "put a bare --ray after the inputs"
    )


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    if args.ray is None:
        return None
    if args.ray_cpus < 1:
        raise UsageError(f"--ray-cpus {args.ray_cpus}: give at least 1")
    return RayOptions(None if args.ray == "local" else args.ray, args.ray_cpus)
