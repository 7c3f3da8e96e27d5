"""A huge image is refused in our words, with the size limit, before its pixels are decoded;
one just above Pillow's warning threshold is read without a raw Pillow warning."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.io.image_header import max_image_pixels
from realtime.io.images import read_image


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims `width` x `height` gray pixels and holds none (the header is all
    that is read before the size check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_an_image_above_the_limit_is_refused_in_one_line(tmp_path):
    assert max_image_pixels() == 178_956_970  # twice Pillow's MAX_IMAGE_PIXELS
    huge = _png_header(tmp_path / "huge.png", 20_000, 10_000)  # 200 megapixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning on the way
        with pytest.raises(ValueError) as err:
            read_image(huge)
    assert str(err.value) == (
        f"{huge}: the image is larger than 179 megapixels, the most read here (a guard "
        "against decompression bombs); scale it down first"
    )


def test_a_large_image_under_the_limit_raises_no_pillow_warning(tmp_path):
    big = _png_header(tmp_path / "big.png", 10_000, 10_000)  # 100 MP: Pillow would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="not a readable image"):  # it holds no pixels
            read_image(big)
    real = tmp_path / "real.png"
    cv2.imwrite(str(real), np.full((4, 6, 3), 200, np.uint8))
    assert read_image(real).shape == (4, 6, 3)
