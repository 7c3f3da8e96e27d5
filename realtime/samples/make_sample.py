"""Re-encode the bundled sample clip, or the 1080p benchmark clip, from OpenCV's vtest.avi.

    python -m realtime.samples.make_sample path/to/vtest.avi
    python -m realtime.samples.make_sample path/to/vtest.avi --frames 795 --size 1920x1080 \
        --out out/bench-data/vtest_1080p.mp4

vtest.avi (768x576, 10 fps, 795 frames) ships with OpenCV under its BSD licence
(opencv/samples/data/vtest.avi). The clip keeps its frame rate; `--size` scales it (bicubic;
1920x1080 stretches 4:3 to 16:9, as the benchmark scenario asks for a full-HD frame).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from realtime.io.sinks import Mp4Writer
from realtime.io.sources import VideoSource
from realtime.samples import VTEST_SHORT


def make_sample(
    source: Path, out: Path, start: int = 0, frames: int = 50, crf: int = 23,
    size: tuple[int, int] | None = None,
) -> int:  # fmt: skip
    """Write frames [start, start + frames) of `source` to `out`, scaled to `size` (W, H) if
    given; returns the count written."""
    with (
        VideoSource(source, realtime=False) as video,
        Mp4Writer(out, video.info.fps, crf=crf, preset="slow") as writer,
    ):
        t0 = start / video.info.fps
        for frame in video:
            if frame.index >= start + frames:
                break
            if frame.index >= start:
                image = frame.image
                if size is not None:
                    image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
                writer.write(image, frame.pts - t0)
        return writer.frames_written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="OpenCV's vtest.avi")
    parser.add_argument("--out", type=Path, default=VTEST_SHORT)
    parser.add_argument("--start", type=int, default=0, help="first frame to keep")
    parser.add_argument("--frames", type=int, default=50, help="number of frames to keep")
    parser.add_argument("--crf", type=int, default=23, help="x264 constant rate factor")
    parser.add_argument("--size", help="scale to WxH, e.g. 1920x1080 (default: keep)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    n = make_sample(args.source, args.out, args.start, args.frames, args.crf, size)
    print(f"wrote {args.out}: {n} frames, {args.out.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
