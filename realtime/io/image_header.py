"""What an image file's header says before its pixels are decoded: the EXIF orientation, and
whether it is too large to decode at all.

Pillow reads only the header here. It warns about images above `Image.MAX_IMAGE_PIXELS`
(89.5 megapixels) and refuses those above twice that as possible decompression bombs; this
module keeps its warning quiet and turns the refusal into one line with the limit.
"""

from __future__ import annotations

import warnings
from pathlib import Path


def max_image_pixels() -> int:
    """The most pixels an image may have to be read: Pillow's decompression-bomb limit."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag (1-8; 1 = as stored, also for a format without EXIF).

    Raises ValueError for an image above `max_image_pixels()`, before any pixel is decoded.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return int(image.getexif().get(0x0112, 1))
    except Image.DecompressionBombError:
        raise ValueError(
            f"{path}: the image is larger than {max_image_pixels() / 1e6:.0f} megapixels, the "
            "most read here (a guard against decompression bombs); scale it down first"
        ) from None
    except Exception:  # no EXIF, or a format Pillow does not know: as stored
        return 1
