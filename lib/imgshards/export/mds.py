"""Mosaic Streaming (MDS) shards, written without the ``streaming`` package (it needs torch, which a job's
executors do not carry): the bytes ``streaming.MDSWriter`` writes, checked against the library's own reader
(tests/test_export_formats.py).

A shard ``shard.NNNNN.mds`` is ``uint32 samples``, ``uint32 offsets[samples + 1]`` (from the file's start),
the writer's settings as sorted JSON, then the samples; a sample is the ``uint32`` sizes of its
variable-size columns, then every column's bytes, columns in name order. With compression the file is the
compressed shard, ``shard.NNNNN.mds.<ext>``. ``index.json`` lists the shards with their columns and sizes.

Nothing here imports Spark or streaming: the export's executors encode the shards.
"""
from __future__ import annotations

import gzip
import json
import struct
from typing import Optional

INDEX_FILE = "index.json"
# The columns of every exported sample, by name (MDS stores them in sorted name order).
TEXT_COLUMNS = ("label_name", "sample_id", "sha256")
_DEFAULT_LEVEL = {"gz": 9, "zstd": 3}  # MDS's own defaults


def compress(setting: str, data: bytes) -> bytes:
    """``data`` compressed as MDS's ``name[:level]`` (config.MDS_COMPRESSIONS) does."""
    name, _, level = setting.partition(":")
    chosen = int(level) if level else _DEFAULT_LEVEL[name]
    if name == "gz":
        return gzip.compress(data, chosen)
    import zstandard

    return zstandard.ZstdCompressor(level=chosen).compress(data)


def shard_file_name(number: int, compression: Optional[str] = None) -> str:
    """The file of shard ``number``: ``shard.NNNNN.mds``, with the compression's extension when compressed."""
    raw = f"shard.{number:05d}.mds"
    return f"{raw}.{compression.partition(':')[0]}" if compression else raw


def columns(image_shape: Optional[tuple]) -> dict:
    """Column name -> MDS encoding: the image as its encoded bytes, or (``image_shape``) a uint8 array."""
    image = "bytes" if image_shape is None else "ndarray:uint8:" + ",".join(map(str, image_shape))
    return {"image": image, "label": "int", **{name: "str" for name in TEXT_COLUMNS}}


class ShardEncoder:
    """One MDS shard, sample by sample, held in memory until :meth:`finish` (as ``MDSWriter`` holds one)."""

    def __init__(self, column_encodings: dict, size_limit: int, compression: Optional[str] = None):
        self.names = sorted(column_encodings)
        self.encodings = [column_encodings[name] for name in self.names]
        self.sizes = [8 if e == "int" else _static_size(e) for e in self.encodings]
        self.config = {"version": 2, "format": "mds", "compression": compression, "hashes": [],
                       "size_limit": size_limit, "column_names": self.names, "column_encodings": self.encodings,
                       "column_sizes": self.sizes}
        self.samples: list = []

    def add(self, sample: dict) -> None:
        head, body = [], []
        for name, encoding, size in zip(self.names, self.encodings, self.sizes):
            datum = _encode(encoding, sample[name])
            if size is None:
                head.append(len(datum))
            elif size != len(datum):
                raise ValueError(f"MDS column {name} ({encoding}) takes {size} bytes, got {len(datum)}")
            body.append(datum)
        self.samples.append(struct.pack(f"<{len(head)}I", *head) + b"".join(body))

    def finish(self, number: int) -> tuple:
        """(the shard file's bytes, its ``index.json`` entry) as shard ``number`` (:func:`shard_file_name`)."""
        basename = shard_file_name(number)
        config_data = json.dumps(self.config, sort_keys=True).encode()
        count = len(self.samples)
        start = 4 + 4 * (count + 1) + len(config_data)
        offsets, position = [], start
        for sample in self.samples:
            offsets.append(position)
            position += len(sample)
        offsets.append(position)
        if position >= 1 << 32:
            raise ValueError(f"MDS shard {basename} would hold {position} bytes: over 4 GiB (lower export.shard_size_mb)")
        raw = struct.pack(f"<{count + 2}I", count, *offsets) + config_data + b"".join(self.samples)
        entry = {**self.config, "samples": count, "raw_data": {"basename": basename, "bytes": len(raw), "hashes": {}},
                 "zip_data": None}
        compression = self.config["compression"]
        if compression:
            zipped = compress(compression, raw)
            entry["zip_data"] = {"basename": shard_file_name(number, compression), "bytes": len(zipped), "hashes": {}}
            return zipped, entry
        return raw, entry


def index_json(entries: list) -> str:
    """``index.json`` of the shards ``entries`` (in shard order)."""
    return json.dumps({"version": 2, "shards": entries}, sort_keys=True)


def shard_file(entry: dict) -> str:
    """The file name that holds an ``index.json`` entry's shard."""
    return (entry["zip_data"] or entry["raw_data"])["basename"]


def renumbered(entry: dict, number: int) -> dict:
    """An ``index.json`` entry with its shard's files named as shard ``number``."""
    entry["raw_data"]["basename"] = shard_file_name(number)
    if entry["zip_data"]:
        entry["zip_data"]["basename"] = shard_file_name(number, entry["compression"])
    return entry


def _static_size(encoding: str) -> Optional[int]:
    if not encoding.startswith("ndarray:"):
        return None
    _, dtype, shape = encoding.split(":")
    assert dtype == "uint8"
    size = 1
    for dim in shape.split(","):
        size *= int(dim)
    return size


def _encode(encoding: str, value) -> bytes:
    if encoding == "int":
        return struct.pack("<q", int(value))
    if encoding == "str":
        return str(value).encode("utf-8")
    if encoding == "bytes":
        return bytes(value)
    return value.tobytes()  # a uint8 array of the column's static shape
