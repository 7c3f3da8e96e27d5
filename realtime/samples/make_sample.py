"""Re-encode the bundled sample clip from OpenCV's vtest.avi.

    python -m realtime.samples.make_sample path/to/vtest.avi

vtest.avi (768x576, 10 fps, 795 frames) ships with OpenCV under its BSD licence
(opencv/samples/data/vtest.avi). The clip keeps its size and frame rate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from realtime.samples import VTEST_SHORT
from realtime.sinks import Mp4Writer
from realtime.sources import VideoSource


def make_sample(source: Path, out: Path, start: int = 0, frames: int = 50, crf: int = 23) -> int:
    """Write frames [start, start + frames) of `source` to `out`; returns the count written."""
    with (
        VideoSource(source, realtime=False) as video,
        Mp4Writer(out, video.info.fps, crf=crf, preset="slow") as writer,
    ):
        t0 = start / video.info.fps
        for frame in video:
            if frame.index >= start + frames:
                break
            if frame.index >= start:
                writer.write(frame.image, frame.pts - t0)
        return writer.frames_written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="OpenCV's vtest.avi")
    parser.add_argument("--out", type=Path, default=VTEST_SHORT)
    parser.add_argument("--start", type=int, default=0, help="first frame to keep")
    parser.add_argument("--frames", type=int, default=50, help="number of frames to keep")
    parser.add_argument("--crf", type=int, default=23, help="x264 constant rate factor")
    args = parser.parse_args()
    n = make_sample(args.source, args.out, args.start, args.frames, args.crf)
    print(f"wrote {args.out}: {n} frames, {args.out.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
