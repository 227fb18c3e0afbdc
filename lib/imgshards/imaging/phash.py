"""Perceptual hash (64-bit dHash) for near-duplicate detection, and the Hamming distance between two."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from imgshards.imaging.codecs import decode_error, open_image, to_rgb


def perceptual_hash(data: bytes, max_pixels: int) -> int:
    """64-bit difference hash (dHash) from a small decode: JPEGs are decoded at 1/8 scale in the DCT.

    Near-identical images (re-encoded, resized, slightly recompressed) have hashes a few bits apart.
    Returned as a signed 64-bit int so it fits a Spark LongType. Raises :class:`ImageError`.
    """
    img = open_image(data, max_pixels)
    try:
        if img.format == "JPEG":
            img.draft("L", (32, 32))
        img.load()
        img = ImageOps.exif_transpose(img)
        gray = img if img.mode == "L" else to_rgb(img).convert("L")
        small = gray.resize((9, 8), Image.Resampling.BILINEAR)
    except Exception as e:
        raise decode_error(e) from e
    px = np.asarray(small, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= (1 << 63) else value


_BITS64 = (1 << 64) - 1
_popcount = getattr(int, "bit_count", None) or (lambda x: bin(x).count("1"))  # int.bit_count: Python 3.10+


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes (signed or not)."""
    return _popcount((a ^ b) & _BITS64)
