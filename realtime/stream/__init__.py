"""The loop: frames -> poses through the shared models.

`build_pipeline(PipelineSpec(...))` (`assemble.py`) loads the weights and wires a `PosePipeline`
(`pipeline.py`): upload, detect, pose, duplicates merged, one copy to the host, temporal stage,
in micro-batches (files) or one frame at a time (live). Each stream of frames keeps its own
`StreamState` (`state.py`); every result carries its stage times (`results.py`). `serving.py`
puts several live streams' newest frames through the models as one batch.
"""

from realtime.stream.assemble import PipelineSpec, build_pipeline
from realtime.stream.pipeline import PipelineConfig, PosePipeline
from realtime.stream.results import STAGES, FrameResult
from realtime.stream.state import StreamState

__all__ = [
    "STAGES",
    "FrameResult",
    "PipelineConfig",
    "PipelineSpec",
    "PosePipeline",
    "StreamState",
    "build_pipeline",
]
