"""Serving many browser sessions from one set of models: an engine cache and one worker thread.

`PipelineCache` keeps the pose engines the sessions ask for, one `PosePipeline` per distinct
(pose checkpoint, `PoseStageConfig`) around the one shared person detector, least recently used
dropped beyond `capacity`. A second engine on an already loaded checkpoint shares its network.

`ServingWorker` is the only thread that calls a model (CUDA-graph trees are per thread, and it
keeps the models' work in one order). Webcam streams hand it their newest frame with
`frame(...)`; a frame still waiting from the same stream is dropped, so a stream never falls
behind. Each round the worker takes every waiting stream's frame (after waiting up to
`gather_s` for the live streams whose answers just went out) and runs them through the models
together, one `PosePipeline.process` call per engine (one batch when the sessions share one),
then runs one queued job (`call(fn)`: an image, a chunk of an uploaded video, loading an
engine). Every live session's frame is in every round, so the sessions are served in turn and
see the same frame rate; beyond `max_streams` live streams a new one is refused with
`ServerBusy`. A stream opened with `open_stream` (a live connection) keeps its place until
`end_stream`, however long it sends nothing; others lose it after `live_s` without a frame.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ccm.checkpoint import load_checkpoint
from realtime.detect.detector import Detector
from realtime.io.frames import Frame
from realtime.pose.config import PoseStageConfig
from realtime.pose.estimator import PoseEstimator
from realtime.stream.pipeline import PipelineConfig, PosePipeline
from realtime.stream.quantize import CalibrationInputs
from realtime.stream.results import FrameResult
from realtime.stream.state import StreamState

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class EngineKey:
    """Which pose engine: the checkpoint (resolved path) and how it runs."""

    pose: Path
    config: PoseStageConfig


class PipelineCache:
    """Pose pipelines by `EngineKey`, around one shared detector; call `get` on the worker only."""

    def __init__(self, pipeline: PosePipeline, pose_path: Path, capacity: int = 3) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._models = pipeline.sharing_models()  # the detector and the first engine
        self.capacity = capacity
        self.base = EngineKey(Path(pose_path).resolve(), pipeline.estimator.config)
        self._pipelines: OrderedDict[EngineKey, PosePipeline] = OrderedDict()
        self._pipelines[self.base] = self._models

    @property
    def detector(self) -> Detector:
        return self._models.detector

    @property
    def config(self) -> PipelineConfig:
        return self._models.config

    def key(self, pose: Path, flip_test: bool, decoder: str) -> EngineKey:
        """The engine for a checkpoint with these refinement settings (startup settings else)."""
        config = dataclasses.replace(self.base.config, flip_test=flip_test, decoder=decoder)
        return EngineKey(Path(pose).resolve(), config)

    def items(self) -> list[tuple[EngineKey, PosePipeline]]:
        """The loaded engines, least recently used first."""
        return list(self._pipelines.items())

    def warm_up_here(self) -> None:
        """Warm the loaded engines up again on the calling thread where they need it
        (`PoseEstimator.graphs_per_thread`): they were built, and warmed, on another one."""
        for pipeline in self._pipelines.values():
            if pipeline.estimator.graphs_per_thread:
                pipeline.estimator.warm_up()

    def get(self, key: EngineKey) -> PosePipeline:
        """The pipeline for `key`, built (and the checkpoint loaded) if needed; raises
        ValueError / OSError / RuntimeError for a checkpoint that does not load."""
        pipeline = self._pipelines.get(key)
        if pipeline is not None:
            self._pipelines.move_to_end(key)
            return pipeline
        loaded = next((p.estimator for k, p in self._pipelines.items() if k.pose == key.pose), None)
        if loaded is not None:  # the same network with other refinement settings
            model, pose = loaded.model, loaded.pose
        else:
            model, pose = load_checkpoint(key.pose)
            logger.info("pose model: %s (%s, input %s)", key.pose, pose.arch, pose.input_size)
        calibration = None
        if key.config.resolved_precision == "int8":  # asked for only if none is kept on disk
            detection = self._models.detector.config
            calibration = CalibrationInputs(model, pose, key.config, detection).pose
        estimator = PoseEstimator(model, pose, key.config, calibration=calibration)
        pipeline = self._models.sharing_models(estimator)
        self._pipelines[key] = pipeline
        while len(self._pipelines) > self.capacity:
            dropped, _ = self._pipelines.popitem(last=False)
            logger.info("pose engine dropped from the cache: %s", dropped)
        return pipeline


class ServerBusy(RuntimeError):
    """Every place for a live stream is taken."""


class _Request:
    """One piece of work and the answer its caller waits for."""

    def __init__(self, fn: Callable[[], Any] | None = None) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.dropped = False

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.done.set()

    def wait(self, timeout: float | None) -> Any:
        if not self.done.wait(timeout):
            raise TimeoutError(f"the models did not answer within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.value


class _FrameRequest(_Request):
    """A stream's newest frame."""

    def __init__(self, key: EngineKey, state: StreamState, frame: Frame) -> None:
        super().__init__()
        self.key, self.state, self.frame = key, state, frame


@dataclass
class ServingStats:
    """What the worker has done: rounds run, frames served, the largest batch of one round."""

    rounds: int = 0
    frames: int = 0
    dropped: int = 0
    jobs: int = 0
    largest_batch: int = 0


class ServingWorker:
    """The one thread that runs the models for every session (see the module docstring)."""

    def __init__(
        self,
        engines: PipelineCache,
        max_streams: int = 4,
        live_s: float = 2.0,
        gather_s: float = 0.02,
    ) -> None:
        if max_streams < 1 or gather_s < 0:
            raise ValueError(f"need max_streams >= 1, gather_s >= 0; got {max_streams}, {gather_s}")
        self.engines = engines
        self.max_streams = max_streams
        self.live_s = live_s  # a stream that sent nothing for this long no longer holds a place
        self.gather_s = gather_s
        self.stats = ServingStats()
        self._cond = threading.Condition()
        self._frames: dict[int, _FrameRequest] = {}
        self._jobs: deque[_Request] = deque()
        self._live: dict[int, float] = {}  # stream id -> when it last sent a frame
        self._held: set[int] = set()  # streams opened with `open_stream`: never forgotten
        self._closed = False
        # The first job: engines built elsewhere capture their CUDA graphs on this thread now,
        # not bucket by bucket in the middle of the first streams.
        self._jobs.append(_Request(engines.warm_up_here))
        self._thread = threading.Thread(target=self._run, name="ccm-pose-serving", daemon=True)
        self._thread.start()

    def live_streams(self) -> int:
        with self._cond:
            self._forget_quiet(time.monotonic())
            return len(self._live)

    def frame(
        self, stream: int, key: EngineKey, state: StreamState, frame: Frame, timeout: float = 60.0
    ) -> FrameResult | None:
        """`frame` of stream `stream` through the engine `key`; None if a newer frame of the same
        stream replaced it before its turn. Raises ServerBusy for a new stream beyond
        `max_streams`, and what the models raised."""
        request = _FrameRequest(key, state, frame)
        with self._cond:
            self._check_open()
            now = time.monotonic()
            self._take_place(stream, now)
            stale = self._frames.pop(stream, None)
            if stale is not None:
                stale.dropped = True
                stale.finish(None)
                self.stats.dropped += 1
            self._frames[stream] = request
            self._cond.notify()
        return request.wait(timeout)

    def open_stream(self, stream: int) -> None:
        """Take a place for `stream` until `end_stream`; raises ServerBusy when all are held."""
        with self._cond:
            self._check_open()
            self._take_place(stream, time.monotonic())
            self._held.add(stream)

    def end_stream(self, stream: int) -> None:
        """Give a stream's place back at once (its session ended, its connection closed)."""
        with self._cond:
            self._live.pop(stream, None)
            self._held.discard(stream)

    def _take_place(self, stream: int, now: float) -> None:
        self._forget_quiet(now)
        if stream not in self._live and len(self._live) >= self.max_streams:
            webcams = f"{self.max_streams} webcam{'s' if self.max_streams > 1 else ''}"
            raise ServerBusy(
                f"the server is already showing {webcams}, its most; press Record again "
                "when one of them stops"
            )
        self._live[stream] = now

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run `fn()` on the worker thread, in turn with the streams; returns what it returns."""
        request = _Request(fn)
        with self._cond:
            self._check_open()
            self._jobs.append(request)
            self._cond.notify()
        return request.wait(timeout)

    def close(self) -> None:
        """Stop the thread; waiting callers get RuntimeError."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the server is shutting down")

    def _forget_quiet(self, now: float) -> None:
        for stream, last in list(self._live.items()):
            if now - last > self.live_s and stream not in self._frames and stream not in self._held:
                del self._live[stream]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._frames or self._jobs or self._closed):
                    self._cond.wait()
                if self._frames:
                    self._gather()
                if self._closed:
                    pending = [*self._frames.values(), *self._jobs]
                    self._frames.clear()
                    self._jobs.clear()
                    break
                frames = list(self._frames.values())
                self._frames.clear()
                job = self._jobs.popleft() if self._jobs else None
            if frames:
                self._serve_frames(frames)
            if job is not None:
                self.stats.jobs += 1
                try:
                    job.finish(job.fn())
                except BaseException as err:  # handed to the caller, who reports it
                    job.finish(error=err)
        for request in pending:
            request.finish(error=RuntimeError("the server is shutting down"))

    def _gather(self) -> None:
        """Wait up to `gather_s` for the other live streams' next frames, so that streams
        whose answers just went out join this round's batch instead of running one by one."""
        deadline = time.monotonic() + self.gather_s
        while not self._closed and any(s not in self._frames for s in self._live):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _serve_frames(self, requests: list[_FrameRequest]) -> None:
        """One round: every stream's newest frame, one `process` call per engine."""
        self.stats.rounds += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(requests))
        by_engine: dict[EngineKey, list[_FrameRequest]] = {}
        for request in requests:
            by_engine.setdefault(request.key, []).append(request)
        for key, group in by_engine.items():
            try:
                pipeline = self.engines.get(key)
                results = pipeline.process([r.frame for r in group], [r.state for r in group])
            except BaseException as err:
                for request in group:
                    request.finish(error=err)
                continue
            self.stats.frames += len(group)
            for request, result in zip(group, results, strict=True):
                request.finish(result)


class ServedStream:
    """A file's frames through the worker in order, as `process_video` wants a pipeline:
    `reset()` and `stream(frames)`. Frames go in chunks of about the pipeline's batch size that
    end on a detected frame (`StreamState.batch_length`)."""

    def __init__(
        self, worker: ServingWorker, key: EngineKey, state: StreamState, timeout: float = 600.0
    ) -> None:
        self.worker, self.key, self.state, self.timeout = worker, key, state, timeout

    def reset(self) -> None:
        self.worker.call(self.state.reset, self.timeout)

    def stream(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        batch_size = self.worker.engines.config.batch_size
        chunk: list[Frame] = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == self.state.batch_length(batch_size):
                yield from self._process(chunk)
                chunk = []
        if chunk:
            yield from self._process(chunk)

    def _process(self, chunk: list[Frame]) -> list[FrameResult]:
        def run() -> list[FrameResult]:
            return self.worker.engines.get(self.key).process(chunk, [self.state] * len(chunk))

        return self.worker.call(run, self.timeout)
