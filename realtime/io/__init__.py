"""Frames in and results out.

`FrameStream` is what the pipeline reads; `open_source` opens a video file, an image folder, a
camera or a stream URL as a threaded `FrameSource` (`sources.py`, on `frames.py`). Writers
(`sinks.py`: H.264 mp4, JSON Lines, COCO results, images) commit whole files or nothing
(`atomic_files.py`).
"""

from realtime.io.frames import Frame, FrameSource, FrameStream, IncompleteVideoError, SourceInfo
from realtime.io.images import read_image
from realtime.io.sinks import CocoResultsWriter, ImagePosesWriter, JsonlWriter, Mp4Writer
from realtime.io.sources import open_source

__all__ = [
    "CocoResultsWriter",
    "Frame",
    "FrameSource",
    "FrameStream",
    "ImagePosesWriter",
    "IncompleteVideoError",
    "JsonlWriter",
    "Mp4Writer",
    "SourceInfo",
    "open_source",
    "read_image",
]
