"""Codecs on bytes: probe a header, and decode -> orient -> RGB -> resize/crop -> encode.

Nothing here touches Spark. Every failure is an :class:`ImageError` whose ``reason`` comes from the fixed
vocabulary in :data:`QUARANTINE_REASONS`, so a caller can turn it into a quarantine row.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgshards.imaging.geometry import geometry

# Why a file was quarantined: the vocabulary of every quarantine row (docs/outputs.md lists it; a test holds
# the two together).
QUARANTINE_REASONS = {
    "zero_byte": "the file is empty",
    "not_an_image": "no image decoder recognises the bytes",
    "unsupported_format": "an image format this pipeline does not take (see SUPPORTED_FORMATS)",
    "truncated": "the image data ends before the image does",
    "too_large_bytes": "the file is larger than ingest.max_bytes",
    "too_many_pixels": "width x height exceeds ingest.max_pixels (decompression-bomb guard)",
    "corrupt": "the decoder rejected the image data",
    "unreadable": "the file could not be read from storage",
    "changed_since_ingest": "ingest.content is reference and the source file's bytes no longer match its sha256",
    "unlabeled": "labels are required (ingest.labels.required) and none was found for the file",
    "low_quality": "a quality signal is past its threshold and ingest.quality.quarantine names it (the detail says "
                   "which)",
    "label_conflict": "ingest.label_conflicts is quarantine and the file's label differs from that of the same content "
                      "or of its near-duplicate cluster (the detail names the other file and its label)",
    "forgotten": "the file's content was removed for good by the forget job (the detail gives its reason)",
    # Decided from the listing of a local input, before anything is read:
    "name_not_utf8": "the file's name is not UTF-8, which Spark, Delta and object stores cannot hold (the path shown "
                     "escapes its bytes as \\xNN); rename the file",
    "broken_link": "a symbolic link whose target does not exist (or a chain of links too long to follow)",
    "link_outside_input": "a symbolic link to a file or folder outside the input (ingest.follow_links: within_input)",
    "link_loop": "a symbolic link to a folder that is listed already (a loop, or a second link to it)",
    "link_not_followed": "a symbolic link, and ingest.follow_links is none",
}

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "MPO", "PPM", "TGA"})
# raw: the H x W x 3 uint8 array in NumPy's .npy format (what Petastorm's NdarrayCodec stores).
OUTPUT_FORMATS = ("jpeg", "png", "raw")
NPY_MAGIC = b"\x93NUMPY"

# Downscaling by 2 x REDUCING_GAP or more first shrinks by an integer factor with Image.reduce (a box
# filter), then resamples the rest with the bicubic filter. Measured on 10x downscales of photos, against an
# exact bicubic resize: 3.0 is 3.1x faster and 0.18 levels off (mean); 2.0 is 4.9x faster and 0.29 off, but
# 1.16 off on noisy images (the end-to-end pixel test holds 1.0); 1.0 is 1.25 off on photos. JPEGs mostly
# shrink in the DCT first (draft mode), so this matters for other formats.
REDUCING_GAP = 3.0

# Background that transparent pixels are composited onto before RGB conversion.
_BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot be used, with a quarantine ``reason`` and a human ``detail``."""

    def __init__(self, reason: str, detail: str):
        if reason not in QUARANTINE_REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) with our own pixel limit instead of Pillow's process-global one."""
    if not data:
        raise ImageError("zero_byte", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError("not_an_image", "no decoder recognises the data") from e
    except Exception as e:
        raise decode_error(e) from e
    if img.format not in SUPPORTED_FORMATS:
        raise ImageError("unsupported_format", f"format {img.format}")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt", f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("too_many_pixels", f"{width}x{height} = {width * height} px > max_pixels {max_pixels}")
    return img


def looks_truncated(data: bytes, fmt: str) -> bool:
    """Cheap end-of-stream checks without decoding: JPEG must end with EOI, PNG with an IEND chunk, an
    RLE-compressed BMP must reach its end-of-bitmap code (or its last row)."""
    tail = data[-64:].rstrip(b"\x00\r\n ")
    if fmt in ("JPEG", "MPO"):
        return not tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" not in data[-32:]
    if fmt == "BMP":
        return _bmp_rle_truncated(data)
    return False


def _bmp_rle_truncated(data: bytes) -> bool:
    """Walk an RLE8/RLE4 BMP's codes to the end-of-bitmap code (or its last row). Pillow's RLE decoder stops
    quietly where the data ends; the header probe alone let a cut file in, to fail only at its full decode."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return False  # no BITMAPINFOHEADER, so no compression field
    compression = int.from_bytes(data[30:34], "little")
    if compression not in (1, 2):  # BI_RLE8, BI_RLE4
        return False
    height = abs(int.from_bytes(data[22:26], "little", signed=True))
    pos, rows, end = int.from_bytes(data[10:14], "little"), 0, len(data)
    while pos + 2 <= end:
        count, code = data[pos], data[pos + 1]
        pos += 2
        if count:  # a run of one value
            continue
        if code == 0:  # end of line
            rows += 1
        elif code == 1:  # end of bitmap
            return False
        elif code == 2:  # delta: skip right, down
            if pos + 2 > end:
                return True
            rows += data[pos + 1]
            pos += 2
        else:  # absolute: `code` pixels follow, padded to 16 bits
            size = code if compression == 1 else (code + 1) // 2
            pos += size + (size & 1)
            if pos > end:
                return True
    return rows < height


def decode_error(e: Exception) -> ImageError:
    """Decoders raise anything on hostile input (OSError, ValueError, NotImplementedError, IndexError,
    MemoryError, ...): each becomes an ImageError, so the file is quarantined with the original message."""
    if isinstance(e, ImageError):
        return e
    if isinstance(e, Image.DecompressionBombError):
        return ImageError("too_many_pixels", str(e))
    reason = "truncated" if "truncated" in str(e).lower() or isinstance(e, EOFError) else "corrupt"
    return ImageError(reason, f"{type(e).__name__}: {e}")


def probe(data: bytes, max_pixels: int, opened: Optional[Image.Image] = None) -> ImageInfo:
    """Read format and size from the header (no pixel decode; ``opened``: :func:`open_image` of ``data``
    already). Raises :class:`ImageError`."""
    img = opened if opened is not None else open_image(data, max_pixels)
    fmt = img.format or ""  # open_image admits only the SUPPORTED_FORMATS
    if looks_truncated(data, fmt):
        raise ImageError("truncated", f"{fmt} stream has no end marker")
    return ImageInfo(format=fmt, width=img.size[0], height=img.size[1], mode=img.mode)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            # 16-bit samples (I;16*, and 'I' as Pillow opens 16-bit PNGs): keep the high byte.
            arr8 = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info) or (
        mode in ("L", "RGB") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8) of an opened image; 1 when it has none or it cannot be read."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return orientation if orientation in range(1, 9) else 1


def _oriented_size(img: Image.Image) -> tuple:
    """The image's size after EXIF orientation (orientations 5-8 swap width and height)."""
    return img.size[::-1] if exif_orientation(img) in (5, 6, 7, 8) else img.size


def _decode_oriented_rgb(img: Image.Image) -> Image.Image:
    """Load an opened image, apply its EXIF orientation and convert to RGB."""
    img.load()
    return to_rgb(ImageOps.exif_transpose(img))


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> the full-size, oriented RGB image. Raises :class:`ImageError`."""
    img = open_image(data, max_pixels)
    try:
        return _decode_oriented_rgb(img)
    except Exception as e:
        raise decode_error(e) from e


def resize_to(img: Image.Image, size: int, mode: str = "crop", pad_value: int = 0,
              full_size: Optional[tuple] = None) -> Image.Image:
    """Resize an RGB image to size x size by ``mode``. ``full_size``: the size the geometry is computed
    on when ``img`` was decoded smaller (draft mode), so the result does not depend on the draft scale."""
    width, height = full_size or img.size
    geo = geometry(width, height, size, mode)
    resized = img.resize(geo.resized, Image.Resampling.BICUBIC, box=geo.box_in(width, height, img.size),
                         reducing_gap=REDUCING_GAP)
    if geo.resized == (size, size):
        return resized
    canvas = Image.new("RGB", (size, size), (pad_value,) * 3)
    canvas.paste(resized, geo.offset)
    return canvas


def process(
    data: bytes,
    *,
    size: int,
    output_format: str = "jpeg",
    quality: int = 90,
    max_pixels: int = 89_478_485,
    draft: bool = True,
    resize: str = "crop",
    pad_value: int = 0,
) -> tuple[bytes, int, int]:
    """Decode, apply EXIF orientation, convert to RGB, resize to ``size`` x ``size`` by ``resize``
    (see :data:`RESIZE_MODES`), then encode as JPEG (``quality``), PNG or a raw .npy array.

    Returns ``(encoded_bytes, width, height)``. Raises :class:`ImageError` for any bad input.
    ``draft`` lets the JPEG decoder scale by 1/2, 1/4 or 1/8 in the DCT when the output is that much smaller.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    img = open_image(data, max_pixels)
    try:
        img, full_size = decode_for_output(img, size, resize, draft)
        img = resize_to(img, size, resize, pad_value, full_size)
        return encode(img, output_format, quality), size, size
    except Exception as e:
        raise decode_error(e) from e


def decode_for_output(img: Image.Image, size: int, resize: str, draft: bool) -> tuple:
    """Decode an opened image, oriented and in RGB, for a ``size`` output by ``resize`` (with ``draft``, a
    JPEG scaled in the DCT: :func:`draft_request`). Returns (image, full oriented size or None when not
    scaled). Raises what the decoder raises (:func:`decode_error` names it)."""
    request = draft_request(img, size, resize) if draft else None
    if request is None:
        return _decode_oriented_rgb(img), None
    full_size = _oriented_size(img)
    img.draft(img.mode, request)
    return _decode_oriented_rgb(img), full_size


def draft_request(img: Image.Image, size: int, resize: str) -> Optional[tuple]:
    """The size (as stored, before EXIF orientation) to ask a JPEG's decoder for, so that it scales by 1/2,
    1/4 or 1/8 in the DCT while the resize box keeps at least its output size; None when the output is not
    that much smaller (or the image is no JPEG). A JPEG's EXIF is read at open, so this decodes nothing."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L", "CMYK", "YCbCr"):
        return None
    w, h = _oriented_size(img)
    geo = geometry(w, h, size, resize)
    need = (w * geo.resized[0] / (geo.box[2] - geo.box[0]), h * geo.resized[1] / (geo.box[3] - geo.box[1]))
    if max(need[0] / w, need[1] / h) >= 0.5:
        return None
    request = (math.ceil(need[0]), math.ceil(need[1]))
    return request if img.size == (w, h) else request[::-1]


def encode(img, output_format: str, quality: int) -> bytes:
    """An RGB PIL image or H x W x 3 uint8 array -> JPEG (``quality``), PNG or .npy bytes."""
    if output_format == "raw":
        out = io.BytesIO()
        np.save(out, np.ascontiguousarray(np.asarray(img, dtype=np.uint8)), allow_pickle=False)
        return out.getvalue()
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img.info = {}  # metadata of the source (a tRNS chunk, ICC, EXIF) does not describe the output
    out = io.BytesIO()
    if output_format == "jpeg":
        img.save(out, format="JPEG", quality=quality)
    else:
        img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """Processed image bytes (JPEG, PNG or .npy) -> H x W x 3 uint8 array."""
    if data[:6] == NPY_MAGIC:
        return np.load(io.BytesIO(data), allow_pickle=False)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def channel_histogram(data: bytes) -> np.ndarray:
    """Processed image bytes (JPEG, PNG or .npy) -> 3 x 256 int64 counts of each RGB channel's values, by
    Pillow's histogram (cheaper than numpy's bincount on the decoded array)."""
    img = Image.fromarray(decode_rgb(data)) if data[:6] == NPY_MAGIC else Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(img.histogram(), np.int64).reshape(3, 256)


def plain_rgb_jpeg_or_png(data: bytes, max_pixels: int) -> Optional[tuple]:
    """(width, height) for the images a DALI decoder handles exactly like :func:`process`: JPEG or PNG in
    RGB or L, no transparency, no EXIF orientation; None for everything else (the Pillow path).
    Raises :class:`ImageError` for bad input."""
    img = open_image(data, max_pixels)
    if img.format not in ("JPEG", "PNG") or img.mode not in ("RGB", "L") or "transparency" in img.info:
        return None
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return None
    return img.size if orientation in (0, 1) else None
