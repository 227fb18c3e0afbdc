"""An export is untrusted input to whoever reads it: what the loader checks before a sample reaches a batch.

- **No code from any file of it.** The arrow backend never unpickles anything. Petastorm's reader unpickles
  the Unischema in ``_common_metadata`` with an "allow-list" that admits every global of ``builtins``,
  ``numpy`` and ``pyspark`` (so ``builtins.exec`` runs); while the loader opens a Petastorm reader, that
  unpickling goes through :class:`SchemaUnpickler` instead, which admits only the classes a Unischema is
  made of.
- **Images only as the manifest declares them.** Each image is decoded only by the codec the export
  declares (JPEG or PNG through that one Pillow plugin, or a ``.npy`` array without pickles), and its size
  is checked from the header before its pixels are decoded; batches are sized from the manifest, never
  from a sample. A sample that differs fails the read with :class:`ExportError` naming it (skipping it
  would leave the ranks with different batch counts).
"""
from __future__ import annotations

import contextlib
import io
import pickle
import threading
from typing import Callable, Iterator

import numpy as np

from imgshards.imaging.codecs import NPY_MAGIC


class ExportError(ValueError):
    """An export whose files do not hold what its manifest declares."""


# --- the Unischema pickle --------------------------------------------------------------------------------

# What a Unischema pickled by Petastorm (0.12, 0.13) or by imgshards.export.unischema refers to.
_SCHEMA_GLOBALS = {
    ("petastorm.unischema", "Unischema"), ("petastorm.unischema", "UnischemaField"),
    ("petastorm.codecs", "CompressedImageCodec"), ("petastorm.codecs", "NdarrayCodec"),
    ("petastorm.codecs", "CompressedNdarrayCodec"), ("petastorm.codecs", "ScalarCodec"),
    ("collections", "OrderedDict"), ("decimal", "Decimal"), ("numpy", "dtype"),
}
_NUMPY_SCALARS = {"bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "float16", "float32", "float64", "str_", "unicode_", "bytes_", "string_", "object_"}


class SchemaUnpickler(pickle.Unpickler):
    """Unpickles a Unischema and nothing else: a global outside the classes it is made of (Petastorm's
    schema and codec classes, numpy's scalar types, pyspark's data types) is refused."""

    def find_class(self, module: str, name: str):
        allowed = ((module, name) in _SCHEMA_GLOBALS
                   or (module == "numpy" and name in _NUMPY_SCALARS)
                   or (module == "pyspark.sql.types" and name.endswith("Type") and name.isidentifier()))
        if not allowed:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden in an export's schema")
        return super().find_class(module, name)


def loads_schema(data: bytes):
    return SchemaUnpickler(io.BytesIO(data)).load()


_PATCH = threading.Lock()


@contextlib.contextmanager
def petastorm_unpickles_safely() -> Iterator[None]:
    """While the block runs (opening a Petastorm reader), Petastorm unpickles dataset metadata with
    :class:`SchemaUnpickler` (its ``petastorm.etl.legacy.restricted_loads``, which 0.12 and 0.13 call for
    the Unischema)."""
    from petastorm.etl import legacy

    with _PATCH:
        original = legacy.restricted_loads
        legacy.restricted_loads = loads_schema
        try:
            yield
        finally:
            legacy.restricted_loads = original


# --- images ------------------------------------------------------------------------------------------------

_PIL_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG"}
MAX_SIDE = 65535  # as JPEG's own limit: a manifest declaring more is not one this project wrote


def declared_shape(image: dict) -> tuple:
    """(height, width, 3) from the manifest's ``image``; ExportError for anything else."""
    try:
        shape = (int(image["height"]), int(image["width"]), int(image.get("channels", 3)))
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"the manifest's image {image!r} does not declare height, width and channels") from e
    if not (0 < shape[0] <= MAX_SIDE and 0 < shape[1] <= MAX_SIDE and shape[2] == 3):
        raise ExportError(f"the manifest declares images of {shape}; this loader reads H x W x 3, sides 1..{MAX_SIDE}")
    return shape


def image_decoder(image: dict) -> Callable[[bytes], np.ndarray]:
    """The decoder of the manifest's ``image`` (codec, format, size): stored bytes -> H x W x 3 uint8, or
    ExportError when the bytes are anything else."""
    shape = declared_shape(image)
    codec = image.get("codec", "compressed")
    if codec == "ndarray":
        return lambda data: _decode_npy(data, shape)
    if codec != "compressed" or str(image.get("format", "")).lower() not in _PIL_FORMATS:
        raise ExportError(f"the manifest declares codec {codec!r}, format {image.get('format')!r}: this loader "
                          f"reads compressed {sorted(set(_PIL_FORMATS.values()))} or ndarray")
    pil_format = _PIL_FORMATS[str(image["format"]).lower()]
    return lambda data: _decode_compressed(data, pil_format, shape)


def _decode_compressed(data: bytes, pil_format: str, shape: tuple) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data), formats=[pil_format])  # no other decoder is tried
    except Image.DecompressionBombError as e:  # a header claiming far more pixels than the manifest's
        raise ExportError(f"a {pil_format} image larger than declared ({e})") from e
    except Exception as e:
        raise ExportError(f"not a {pil_format} image ({type(e).__name__})") from e
    if img.size != (shape[1], shape[0]) or img.mode not in ("RGB", "L"):
        raise ExportError(f"a {img.size[0]}x{img.size[1]} {img.mode} image where the manifest declares "
                          f"{shape[1]}x{shape[0]} RGB")
    try:
        return np.asarray(img.convert("RGB"))
    except Exception as e:
        raise ExportError(f"a damaged {pil_format} image ({type(e).__name__}: {e})") from e


def _decode_npy(data: bytes, shape: tuple) -> np.ndarray:
    """A ``.npy`` array, its header checked before anything is allocated: uint8, C order, the declared shape."""
    if data[:6] != NPY_MAGIC:
        raise ExportError("not a .npy array")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(stream)
    except Exception as e:
        raise ExportError(f"a damaged .npy header ({e})") from e
    found_shape, fortran, dtype = header
    if tuple(found_shape) != shape or fortran or dtype != np.uint8:
        raise ExportError(f"a .npy array of {found_shape} {dtype}{' (Fortran order)' if fortran else ''} where the "
                          f"manifest declares {shape} uint8")
    body = data[stream.tell():]
    if len(body) != shape[0] * shape[1] * shape[2]:
        raise ExportError(f"a .npy array of {len(body)} bytes where {shape} takes {shape[0] * shape[1] * shape[2]}")
    return np.frombuffer(body, np.uint8).reshape(shape)


def check_array(pixels: np.ndarray, shape: tuple) -> np.ndarray:
    """A decoded array (Petastorm's reader decodes) checked against the declared shape and dtype."""
    if not isinstance(pixels, np.ndarray) or pixels.shape != shape or pixels.dtype != np.uint8:
        found = f"{pixels.shape} {pixels.dtype}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise ExportError(f"an image of {found} where the manifest declares {shape} uint8")
    return pixels

