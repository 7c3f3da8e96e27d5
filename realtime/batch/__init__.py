"""Batches of files and live sources: `app.py video` and `app.py images`.

`expand_inputs` (`inputs.py`) turns arguments into files with mirrored output names, never
onto an input (`output_guard.py`); `process_video` (`videos.py`) and `process_images`
(`images.py`) run one input through a pipeline into its outputs, which record their source
(`provenance.py`); `cli.py` runs a whole batch with progress, failures and exit codes
(`report.py`, `usage.py`), in one process, under torchrun (`distributed.py`) or on Ray
(`ray_jobs.py`, `ray_pool.py`). Cameras and streams run in `live.py` (`live_cli.py`: their
flags; `segments.py`: their outputs).
"""

from realtime.batch.images import process_images
from realtime.batch.inputs import expand_inputs
from realtime.batch.videos import process_video

__all__ = ["expand_inputs", "process_images", "process_video"]
