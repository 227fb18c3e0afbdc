"""WebDataset shards: POSIX tar files in which each sample is the consecutive members ``<key>.<ext>``
(the image: ``jpg``, ``png`` or ``npy``), ``<key>.cls`` (the label index as text) and ``<key>.json`` (label,
label name, sample id, sha256), keyed by the sample id; and the shard index ``wids.ShardListDataset`` reads
(``{"wids_version": 1, "shardlist": [{"url", "nsamples", "filesize"}]}``, URLs relative to the index).

Nothing here imports Spark or webdataset: the export's executors write the shards.
"""
from __future__ import annotations

import io
import json
import tarfile
from typing import BinaryIO

INDEX_FILE = "index.wids.json"
SHARD_DIGITS = 6


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:0{SHARD_DIGITS}d}.tar"


def brace_pattern(split: str, count: int) -> str:
    """The shards of a split as the brace pattern ``webdataset.WebDataset`` expands."""
    if count == 1:
        return shard_name(split, 0)
    return f"{split}-{{{0:0{SHARD_DIGITS}d}..{count - 1:0{SHARD_DIGITS}d}}}.tar"


def image_extension(image_format: str, codec: str) -> str:
    """The member extension of the image: WebDataset's decoders pick the decoder by it."""
    if codec == "ndarray":
        return "npy"
    return {"jpeg": "jpg", "png": "png"}[image_format]


class ShardWriter:
    """Samples appended to one tar stream, with fixed owner and time so that a re-run writes the same bytes."""

    def __init__(self, out: BinaryIO, image_extension: str, mtime: int):
        self._tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT)
        self._extension = image_extension
        self._mtime = mtime
        self.samples = 0

    def add(self, sample: dict) -> None:
        key = sample["sample_id"]
        if "." in key or "/" in key:
            raise ValueError(f"WebDataset key {key!r} holds '.' or '/'")
        meta = {"label": int(sample["label"]), "label_name": sample["label_name"], "sample_id": key,
                "sha256": sample["sha256"]}
        for extension, data in ((self._extension, bytes(sample["image"])), ("cls", str(int(sample["label"])).encode()),
                                ("json", json.dumps(meta, sort_keys=True).encode())):
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), self._mtime, 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> None:
        self._tar.close()


def index_json(split: str, shards: list) -> str:
    """The ``wids`` index of a split's ``shards`` ([{url, nsamples, filesize}], URLs relative to the index)."""
    return json.dumps({"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split, "shardlist": shards},
                      indent=1)
