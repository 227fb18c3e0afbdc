"""The Petastorm schema of an exported split, written without Petastorm.

Petastorm reads a dataset's schema from ``_common_metadata``: the key ``dataset-toolkit.unischema.v1`` holds a
pickled ``petastorm.unischema.Unischema``. Petastorm cannot be imported on a current stack (pyarrow >= 16,
numpy 2), yet its readers (0.12 and 0.13, on the old stacks that still have them) should read what a Spark 4 job
exports. So this module pickles stand-ins that carry the names of Petastorm's classes (and of numpy's and
pyspark's types it refers to): the same opcodes, byte for byte, as ``pickle.dumps`` of the schema Petastorm
itself builds (tests/test_petastorm_compat.py compares them in an environment with Petastorm). Nothing here
imports Petastorm, numpy or pyspark.
"""
from __future__ import annotations

import collections
import io
import pickle
from typing import Any, Optional

UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_PER_FILE_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"


def _stand_in(module: str, name: str, base: type = object) -> type:
    """A class that pickles as the global ``module.name`` (see :class:`_Pickler`)."""
    return type(name, (base,), {"__module__": module, "__qualname__": name, "_pickled_as_global": True})


# The classes a Unischema refers to, by the names the reader resolves.
_Unischema = _stand_in("petastorm.unischema", "Unischema")
UnischemaField = collections.namedtuple(  # a NamedTuple in Petastorm, pickled alike
    "UnischemaField", ["name", "numpy_dtype", "shape", "codec", "nullable"], module="petastorm.unischema")
setattr(UnischemaField, "_pickled_as_global", True)  # noqa: B010  # a namedtuple class to mypy
_CompressedImageCodec = _stand_in("petastorm.codecs", "CompressedImageCodec")
_NdarrayCodec = _stand_in("petastorm.codecs", "NdarrayCodec")
_ScalarCodec = _stand_in("petastorm.codecs", "ScalarCodec")
_NUMPY = {name: _stand_in("numpy", name) for name in ("uint8", "int32", "int64", "str_")}
# pyspark's simple types are singletons (one IntegerType() per process): pickled once, then referred to.
_SPARK = {name: _stand_in("pyspark.sql.types", name) for name in ("IntegerType", "LongType", "StringType")}


_PurePickler: Any = pickle._Pickler  # the pure-Python pickler, whose save_global can be overridden


class _Pickler(_PurePickler):
    """Protocol 4, as ``pickle.dumps`` writes by default on Python 3.8 to 3.13; stand-in classes are written
    as their globals without importing their modules (the C pickler would check that it can).

    Its own table of the standard types' methods: ``dill``, where something imported it, replaces entries of
    the shared ``pickle._Pickler.dispatch`` with its own (which a restricted unpickler rejects)."""

    dispatch = {type(None): _PurePickler.save_none, bool: _PurePickler.save_bool, int: _PurePickler.save_long,
                str: _PurePickler.save_str, tuple: _PurePickler.save_tuple, dict: _PurePickler.save_dict,
                type: _PurePickler.save_type}

    def save_global(self, obj, name=None):
        if not getattr(obj, "_pickled_as_global", False):
            return super().save_global(obj, name)
        self.save(obj.__module__)
        self.save(obj.__qualname__)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def _instance(cls: Any, state: Optional[dict] = None):
    obj = cls.__new__(cls)
    obj.__dict__.update(state or {})
    return obj


# (column, numpy dtype, pyspark type of a scalar column, nullable) after the image column.
_SCALARS = (
    ("label", "int32", "IntegerType", False),
    ("label_name", "str_", "StringType", False),
    ("sample_id", "str_", "StringType", False),
    ("sha256", "str_", "StringType", False),
    ("copy", "int32", "IntegerType", False),
    ("augment_seed", "int64", "LongType", True),
)
_QUALITY = 80  # CompressedImageCodec's default quality, which matters only to Petastorm's own encoder


def export_unischema_pickle(size: int, image_format: str, codec: str = "compressed") -> bytes:
    """The pickled Unischema of an exported split, as Petastorm's ``materialize_dataset`` stores it: image
    (size x size x 3 uint8, stored JPEG/PNG-compressed or as a raw ndarray), label index and name, the
    sample's id (unique in the split: the source sha256, or ``<sha256>-<copy>`` for an augmented copy), the
    source image's sha256, the copy number (0: the image itself) and the augmentation seed (null for copy 0)."""
    if codec == "compressed":
        image_codec = _instance(_CompressedImageCodec, {"_image_codec": "." + image_format, "_quality": _QUALITY})
    else:
        image_codec = _instance(_NdarrayCodec)
    spark_types = {name: _instance(cls) for name, cls in _SPARK.items()}  # one each, as pyspark's singletons
    fields = [UnischemaField("image", _NUMPY["uint8"], (size, size, 3), image_codec, False)]
    fields += [UnischemaField(name, _NUMPY[dtype], (), _instance(_ScalarCodec, {"_spark_type": spark_types[kind]}),
                               nullable) for name, dtype, kind, nullable in _SCALARS]
    # Unischema.__init__: the name, the fields by name in order, then each field as an attribute.
    state = {"_name": "ImageSample", "_fields": collections.OrderedDict((f.name, f) for f in fields)}
    state.update((f.name, f) for f in fields)
    out = io.BytesIO()
    _Pickler(out, protocol=4).dump(_instance(_Unischema, state))
    return out.getvalue()


def export_schema_summary(size: int, image_format: str, codec: str = "compressed") -> dict:
    """The manifest's ``schema``: each column's numpy dtype name, shape and codec as Petastorm prints them."""
    image = f"CompressedImageCodec('{image_format}', {_QUALITY})" if codec == "compressed" else "NdarrayCodec()"
    summary = {"image": {"dtype": "uint8", "shape": [size, size, 3], "codec": image}}
    for name, dtype, kind, _ in _SCALARS:
        summary[name] = {"dtype": dtype.rstrip("_"), "shape": [], "codec": f"ScalarCodec({kind}())"}
    return summary
