"""The ``opencv`` backend's transform: :func:`imgshards.imaging.process` with libjpeg-turbo's decoder
called directly and OpenCV's SIMD kernels in place of Pillow's scalar resize and its encoder.

Same inputs, outputs and errors as :func:`imgshards.imaging.codecs.process`:

- Pillow reads the header first (format, size, the pixel limit, EXIF). An RGB or grey JPEG is then decoded
  by libjpeg-turbo through simplejpeg, to the same pixels as Pillow's decoder at the same DCT scale
  (1/2, 1/4 or 1/8 wherever the resize box keeps at least its output size), without Pillow's copy into
  its own image memory; its EXIF orientation is applied to the array. simplejpeg's strict mode refuses any
  stream libjpeg warns about (OpenCV's decoder takes those, Pillow does not).
- Every other image, and every JPEG simplejpeg refuses, is decoded by Pillow as for ``pil``, so Pillow
  stays the judge of bad data: an image is quarantined, with the same reason, exactly when ``pil``
  quarantines it. Its pixels become an array only after the resize's integer shrink (Pillow's ``reduce``),
  so a large PNG costs no more memory than with ``pil``.
- the resize is an antialiased cubic: a Gaussian prefilter whose width follows the scale, then OpenCV's
  cubic resize; a sub-pixel box (a center crop of an odd difference) is resampled at its own grid, a large
  downscale first shrinks by an integer factor as Pillow's ``reducing_gap`` does, and an upscale stays
  Pillow's bicubic (its cost is the output's);
- JPEG and PNG are encoded by OpenCV.

The pixels differ from ``pil``'s by under one 8-bit level for most photos (mean absolute difference;
benchmarks/README.md has the measured distribution).
"""
from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from imgshards.imaging.codecs import (
    OUTPUT_FORMATS,
    REDUCING_GAP,
    decode_error,
    decode_for_output,
    draft_request,
    encode,
    exif_orientation,
    looks_truncated,
    open_image,
)
from imgshards.imaging.geometry import geometry

# One thread per process: Spark runs one Python worker per core, so OpenCV's own thread pool would only
# oversubscribe the executor.
cv2.setNumThreads(1)

# The Gaussian prefilter's variance, in source pixels, for a downscale by s (0 at s = 1, where Pillow's
# cubic is the identity): A (1/s^2 - 1) + B (1/s - 1), fitted to the sigmas that matched Pillow's
# antialiased bicubic best on the sample photos at s = 0.17, 0.27, 0.43 and 0.68.
GAUSS_A, GAUSS_B = 0.08, 0.29


def _prefilter_variance(scale: float) -> float:
    return GAUSS_A * (1 / scale**2 - 1) + GAUSS_B * (1 / scale - 1)


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
    """:func:`imgshards.imaging.codecs.process`, the fast way: ``(encoded_bytes, size, size)``, or
    :class:`ImageError` for bad input."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    img = open_image(data, max_pixels)
    try:
        decoded = _decode_jpeg(data, img, size, resize, draft)
        if decoded is None:
            # Left as Pillow's image: the resize's integer shrink, where there is one, happens in Pillow, so the
            # full-size pixels are not copied into an array first (on a 24 Mpx PNG, 2.6 times pil's peak memory).
            pil_img, full_size = decode_for_output(img, size, resize, draft)
            decoded = pil_img, full_size or pil_img.size
        array, full_size = decoded
        out = _resize_to(array, full_size, size, resize, pad_value)
        return _encode_rgb(out, output_format, quality), size, size
    except Exception as e:
        raise decode_error(e) from e


def _decode_jpeg(data: bytes, img: Image.Image, size: int, resize: str, draft: bool) -> Optional[tuple]:
    """(oriented RGB array, full oriented size) of an RGB or grey JPEG, decoded by libjpeg-turbo through
    simplejpeg at the DCT scale Pillow's draft mode would pick, so the pixels are Pillow's. In strict mode
    it refuses a stream libjpeg only warns about; then, and for every other image, None: Pillow decodes,
    and judges."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or looks_truncated(data, "JPEG"):
        return None
    request = draft_request(img, size, resize) if draft else None
    stored_w, stored_h = img.size
    factor = 1
    if request is not None:  # Pillow's draft: the largest of 8, 4, 2 that the request fits
        fits = min(stored_w // request[0], stored_h // request[1])
        factor = next(f for f in (8, 4, 2, 1) if fits >= f)
    shape = (-(-stored_h // factor), -(-stored_w // factor), 3)
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=shape[1], min_height=shape[0], strict=True)
    except ValueError:
        return None
    if rgb.shape != shape:
        return None
    orientation = exif_orientation(img)
    size_oriented = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
    return _orient(rgb, orientation), size_oriented


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an H x W x C array, as ImageOps.exif_transpose does to an image."""
    if orientation == 1:
        return a
    t = a.transpose(1, 0, 2)
    oriented = {2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: t, 6: t[:, ::-1], 7: t[::-1, ::-1], 8: t[::-1]}
    return np.ascontiguousarray(oriented[orientation])


def _size(a) -> tuple:
    """(width, height) of an H x W x 3 array or of a Pillow image."""
    return a.size if isinstance(a, Image.Image) else (a.shape[1], a.shape[0])


def _resize_to(a, full_size: tuple, size: int, mode: str, pad_value: int) -> np.ndarray:
    """:func:`imgshards.imaging.codecs.resize_to` on an array (or an RGB Pillow image) decoded at ``a``'s size
    from an image of ``full_size`` (the geometry is computed on the full size, so it does not depend on the
    DCT scale)."""
    width, height = full_size
    geo = geometry(width, height, size, mode)
    resized = resample(a, geo.box_in(width, height, _size(a)), geo.resized)
    if geo.resized == (size, size):
        return resized
    canvas = np.full((size, size, 3), pad_value, np.uint8)
    x, y = geo.offset
    canvas[y:y + geo.resized[1], x:x + geo.resized[0]] = resized
    return canvas


def resample(a, box: tuple, out_size: tuple) -> np.ndarray:
    """The sub-pixel ``box`` (left, top, right, bottom) of an H x W x 3 uint8 array (or an RGB Pillow image)
    resized to ``out_size`` (width, height) with an antialiased cubic filter."""
    left, top, right, bottom = box
    if out_size[0] > right - left or out_size[1] > bottom - top:  # an upscale: Pillow's cost is the output's
        image = a if isinstance(a, Image.Image) else Image.fromarray(np.ascontiguousarray(a))
        return np.asarray(image.resize(out_size, Image.Resampling.BICUBIC, box=box))
    a, box = _reduce(a, box, out_size)
    a = np.asarray(a)
    left, top, right, bottom = box
    scale_x, scale_y = out_size[0] / (right - left), out_size[1] / (bottom - top)
    x0, y0 = math.floor(left), math.floor(top)
    frac_x, frac_y = left - x0, top - y0
    blur_x, blur_y = _prefilter_variance(scale_x), _prefilter_variance(scale_y)
    # A box between pixel centres is first shifted onto them by a 2-tap linear interpolation, whose own
    # variance f(1 - f) the prefilter then leaves out; where that is clearly more blur than the scale wants, an
    # affine warp with the cubic filter does shift and scale in one.
    shift_x, shift_y = frac_x * (1 - frac_x), frac_y * (1 - frac_y)
    warp = shift_x > blur_x + 0.1 or shift_y > blur_y + 0.1
    if not warp:
        blur_x, blur_y = blur_x - shift_x, blur_y - shift_y
    width, height = max(1, round(right - left)), max(1, round(bottom - top))
    margin = 2 + math.ceil(3 * math.sqrt(max(blur_x, blur_y, 0.0)))
    mx, my = max(0, x0 - margin), max(0, y0 - margin)
    mx1, my1 = min(a.shape[1], x0 + width + margin), min(a.shape[0], y0 + height + margin)
    region = cv2.copyMakeBorder(a[my:my1, mx:mx1], my - (y0 - margin), y0 + height + margin - my1,
                                mx - (x0 - margin), x0 + width + margin - mx1, cv2.BORDER_REPLICATE)
    if blur_x > 0.01 or blur_y > 0.01:
        region = cv2.GaussianBlur(region, (0, 0), sigmaX=math.sqrt(max(blur_x, 1e-4)),
                                  sigmaY=math.sqrt(max(blur_y, 1e-4)), borderType=cv2.BORDER_REPLICATE)
    if warp:  # output pixel centre (i + 0.5) comes from left + (i + 0.5) / scale in the source
        left, top = left - x0 + margin, top - y0 + margin
        matrix = np.array([[scale_x, 0, 0.5 * scale_x - 0.5 - left * scale_x],
                           [0, scale_y, 0.5 * scale_y - 0.5 - top * scale_y]], np.float32)
        return cv2.warpAffine(region, matrix, out_size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    x = y = margin
    if frac_x:
        region = cv2.addWeighted(region[:, x:x + width], 1 - frac_x, region[:, x + 1:x + width + 1], frac_x, 0)
        x = 0
    if frac_y:
        region = cv2.addWeighted(region[y:y + height], 1 - frac_y, region[y + 1:y + height + 1], frac_y, 0)
        y = 0
    region = region[y:y + height, x:x + width]
    return cv2.resize(region, out_size, interpolation=cv2.INTER_CUBIC)


def _reduce(a, box: tuple, out_size: tuple) -> tuple:
    """Shrink by an integer factor first (a box average, as Pillow's ``reducing_gap`` does) when the box
    is REDUCING_GAP times larger than its output or more; returns the array (or the Pillow image, unshrunk)
    and the box in its pixels. A Pillow image is shrunk by Pillow's ``reduce``, into an array."""
    left, top, right, bottom = box
    fx = int((right - left) / out_size[0] / REDUCING_GAP) or 1
    fy = int((bottom - top) / out_size[1] / REDUCING_GAP) or 1
    if fx == 1 and fy == 1:
        return a, box
    width, height = _size(a)
    x0, y0 = int(left // fx) * fx, int(top // fy) * fy
    x1, y1 = min(width, math.ceil(right / fx) * fx), min(height, math.ceil(bottom / fy) * fy)
    if isinstance(a, Image.Image):
        reduced = np.asarray(a.reduce((fx, fy), (x0, y0, x1, y1)))
    else:
        reduced = cv2.resize(a[y0:y1, x0:x1], (-(-(x1 - x0) // fx), -(-(y1 - y0) // fy)), interpolation=cv2.INTER_AREA)
    return reduced, ((left - x0) / fx, (top - y0) / fy, (right - x0) / fx, (bottom - y0) / fy)


def _encode_rgb(rgb: np.ndarray, output_format: str, quality: int) -> bytes:
    if output_format == "raw":
        return encode(rgb, "raw", quality)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if output_format == "jpeg":
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {bgr.shape} array as {output_format}")
    return buffer.tobytes()
