"""Pure image functions on bytes and arrays: no Spark, no Delta.

The functions callers use are importable from here (``from imgshards import imaging``, then
``imaging.probe(...)``); they live in :mod:`.codecs` (probe, decode, orient, convert, resize, encode),
:mod:`.geometry` (the resize modes' arithmetic) and :mod:`.fingerprint` (near-duplicate hashes and quality
signals). :mod:`.augment` draws offline augmentation's parameters and :mod:`.dali` runs the DALI graph; import those by name.

Every failure on bad data is an :class:`ImageError` whose ``reason`` comes from the fixed vocabulary in
:data:`QUARANTINE_REASONS`, so a caller can turn it into a quarantine row.
"""
from imgshards.imaging.codecs import (
    NPY_MAGIC,
    OUTPUT_FORMATS,
    QUARANTINE_REASONS,
    REDUCING_GAP,
    SUPPORTED_FORMATS,
    ImageError,
    ImageInfo,
    channel_histogram,
    decode,
    decode_rgb,
    encode,
    open_image,
    plain_rgb_jpeg_or_png,
    probe,
    process,
    resize_to,
    to_rgb,
)
from imgshards.imaging.fingerprint import Fingerprint, fine_distance, fingerprint, hamming
from imgshards.imaging.geometry import RESIZE_MODES, Geometry, center_crop_box, geometry

__all__ = [
    "NPY_MAGIC", "OUTPUT_FORMATS", "QUARANTINE_REASONS", "REDUCING_GAP", "RESIZE_MODES", "SUPPORTED_FORMATS",
    "Geometry", "ImageError", "ImageInfo", "center_crop_box", "channel_histogram", "decode", "decode_rgb",
    "Fingerprint", "encode", "fine_distance", "fingerprint", "geometry", "hamming", "open_image", "plain_rgb_jpeg_or_png",
    "probe", "process", "resize_to", "to_rgb",
]
