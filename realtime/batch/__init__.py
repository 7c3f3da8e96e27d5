"""Batches of files: `app.py video` and `app.py images`.

`expand_inputs` (`inputs.py`) turns arguments into files with mirrored output names;
`process_video` (`videos.py`) and `process_images` (`images.py`) run one input through a
pipeline into its outputs; `cli.py` runs a whole batch with progress, failures and exit codes
(`usage.py`), split across processes by `distributed.py`.
"""

from realtime.batch.images import process_images
from realtime.batch.inputs import expand_inputs
from realtime.batch.videos import process_video

__all__ = ["expand_inputs", "process_images", "process_video"]
