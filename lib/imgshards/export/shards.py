"""The MDS and WebDataset shards of one split, written by the executors in one pass: each task writes one
shard of each format (the same samples, in the same order) straight to the version folder; only each
shard's index entry comes back to the driver, which writes the indexes.

The shard count of a split is ``max(ceil(bytes / export.shard_size_mb), min(export.min_shards, rows))``:
shards near the size setting, and at least ``min_shards`` of them (one per sample below that), so that
every rank and DataLoader worker of a run with up to ``min_shards`` of them together gets a shard of its
own (WebDataset hands out whole shards). A task writes to a name of its own attempt and renames it into
place, except on object stores, where the one PUT of a finished upload is atomic already.
"""
from __future__ import annotations

import io
import json
import logging
import math
import time
from typing import Iterator

import pandas as pd
from pyarrow.fs import FileSelector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from imgshards.config import ExportConfig, join_path
from imgshards.export import mds, webdataset
from imgshards.io import storage
from imgshards.io.filesystems import arrow_filesystem, is_object_store, is_s3

log = logging.getLogger(__name__)

SHARD_FORMATS = ("mds", "webdataset")
ATTEMPT = ".attempt-"  # a task writes its shard as <name>.attempt-<stage>-<attempt>, then renames it
_RESULT = "shard int, samples long, mds string, mds_bytes long, wds_bytes long"


def shard_count(rows: int, estimated_bytes: int, export: ExportConfig) -> int:
    if rows == 0:
        return 0
    by_size = math.ceil(estimated_bytes / (export.shard_size_mb * 1024 * 1024))
    return max(by_size, min(export.min_shards, rows))


def write_shards(spark: SparkSession, rows: DataFrame, version_dir: str, version_name: str, split: str, *,
                 formats: tuple, export: ExportConfig, image: dict, expected_rows: int, estimated_bytes: int) -> dict:
    """Write ``rows`` (the split's export columns) as the shards of ``formats`` (of SHARD_FORMATS) under
    ``version_dir``; returns each format's manifest entry (path relative to the export root, index file,
    samples, shards, their file names, bytes)."""
    count = shard_count(expected_rows, estimated_bytes, export)
    folders = {fmt: join_path(version_dir, fmt, split) for fmt in formats}  # <version>/<format>/<split>
    shape = (image["height"], image["width"], image["channels"]) if image["codec"] == "ndarray" else None
    target = {
        "folders": folders, "split": split, "shape": shape,
        "columns": mds.columns(shape), "size_limit": export.shard_size_mb * 1024 * 1024,
        "compression": export.mds_compression, "extension": webdataset.image_extension(image["format"], image["codec"]),
        "mtime": int(time.time()),
        "s3": storage.s3_settings(spark) if is_s3(version_dir) else (None, None, None),
        "atomic_put": is_object_store(version_dir),
    }
    written: list = []
    if count:
        shuffled = rows.repartition(count).sortWithinPartitions(F.rand(export.shuffle_seed))
        written = sorted(shuffled.mapInPandas(_shard_writer(target), _RESULT).collect(), key=lambda r: r["shard"])
    if sum(r["samples"] for r in written) != expected_rows:
        raise RuntimeError(f"{split}: the shards hold {sum(r['samples'] for r in written)} samples, "
                           f"expected {expected_rows}")
    if not target["atomic_put"]:
        _remove_attempts(spark, folders.values())
    numbers = _renumber(spark, target, [r["shard"] for r in written])
    entries: dict = {}
    if "mds" in formats:
        shards = [mds.renumbered(json.loads(row["mds"]), number) for row, number in zip(written, numbers)]
        storage.write_text(spark, join_path(folders["mds"], mds.INDEX_FILE), mds.index_json(shards))
        entries["mds"] = {"path": f"{version_name}/mds/{split}", "index": mds.INDEX_FILE,
                          "samples": expected_rows, "shards": len(shards), "files": [mds.shard_file(e) for e in shards],
                          "bytes": sum(r["mds_bytes"] for r in written), "compression": export.mds_compression}
    if "webdataset" in formats:
        shardlist = [{"url": webdataset.shard_name(split, n), "nsamples": row["samples"], "filesize": row["wds_bytes"]}
                     for row, n in zip(written, numbers)]
        storage.write_text(spark, join_path(folders["webdataset"], webdataset.INDEX_FILE),
                           webdataset.index_json(split, shardlist))
        entries["webdataset"] = {"path": f"{version_name}/webdataset/{split}",
                                 "index": webdataset.INDEX_FILE, "samples": expected_rows, "shards": len(shardlist),
                                 "files": [shard["url"] for shard in shardlist],
                                 "pattern": webdataset.brace_pattern(split, len(shardlist)) if shardlist else None,
                                 "bytes": sum(r["wds_bytes"] for r in written)}
    log.info("%s: %d shards of %s", split, len(written), ", ".join(formats))
    return entries


def _shard_writer(target: dict):
    """mapInPandas body: the task's partition as one shard of each format (nothing for an empty one)."""

    def write(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import numpy as np
        from pyspark import TaskContext

        context = TaskContext.get()
        number = context.partitionId()
        folders = target["folders"]
        located = {fmt: arrow_filesystem(folder, *target["s3"]) for fmt, folder in folders.items()}
        fs = next(iter(located.values()))[0]
        roots = {fmt: root for fmt, (_, root) in located.items()}
        if not target["atomic_put"]:
            for root in roots.values():
                fs.create_dir(root, recursive=True)
        suffix = "" if target["atomic_put"] else f"{ATTEMPT}{context.stageId()}-{context.attemptNumber()}"
        encoder = (mds.ShardEncoder(target["columns"], target["size_limit"], target["compression"])
                   if "mds" in folders else None)
        tar_path = tar_stream = tar = None
        if "webdataset" in folders:
            tar_path = f"{roots['webdataset']}/{webdataset.shard_name(target['split'], number)}"
            tar_stream = fs.open_output_stream(tar_path + suffix)
            tar = webdataset.ShardWriter(tar_stream, target["extension"], target["mtime"])
        samples = 0
        try:
            for batch in batches:
                for sample in batch.to_dict("records"):
                    if encoder is not None:
                        image = sample["image"]
                        if target["shape"] is not None:
                            image = np.load(io.BytesIO(image), allow_pickle=False)
                            if image.dtype != np.uint8 or image.shape != tuple(target["shape"]):
                                raise ValueError(f"{sample['sample_id']}: array {image.dtype} {image.shape}, "
                                                 f"expected uint8 {tuple(target['shape'])}")
                        encoder.add({**sample, "image": image})
                    if tar is not None:
                        tar.add(sample)
                    samples += 1
        finally:
            if tar is not None:
                tar.close()
                tar_stream.close()
        if samples == 0:
            if tar_path:
                fs.delete_file(tar_path + suffix)
            return
        wds_bytes = 0
        if tar_path:
            if suffix:
                fs.move(tar_path + suffix, tar_path)
            wds_bytes = fs.get_file_info(tar_path).size
        entry, mds_bytes = None, 0
        if encoder is not None:
            data, entry = encoder.finish(number)
            path = f"{roots['mds']}/{mds.shard_file(entry)}"
            with fs.open_output_stream(path + suffix) as out:
                out.write(data)
            if suffix:
                fs.move(path + suffix, path)
            mds_bytes = len(data)
        yield pd.DataFrame([{"shard": number, "samples": samples, "mds": json.dumps(entry),
                             "mds_bytes": mds_bytes, "wds_bytes": wds_bytes}])

    return write


def _remove_attempts(spark: SparkSession, folders) -> None:
    """Delete what task attempts that did not finish (an executor lost mid-shard) left under their own names."""
    for folder in folders:
        fs, root = storage.arrow_fs(spark, folder)
        for info in fs.get_file_info(FileSelector(root, allow_not_found=True)):
            if ATTEMPT in info.base_name:
                log.info("removing %s, left by a task attempt that did not finish", info.path)
                fs.delete_file(info.path)


def _renumber(spark: SparkSession, target: dict, numbers: list) -> list:
    """Shard numbers 0..n-1 for the written shards ``numbers`` (partition ids): an empty partition (a round-robin
    repartition can leave one when a split has few rows per shard) leaves a gap, closed by renaming the shards
    after it, so that the WebDataset brace pattern covers the split."""
    dense = list(range(len(numbers)))
    if numbers == dense:
        return dense
    names = {"webdataset": lambda n: webdataset.shard_name(target["split"], n),
             "mds": lambda n: mds.shard_file_name(n, target["compression"])}
    for fmt, folder in target["folders"].items():
        fs, root = storage.arrow_fs(spark, folder)
        for old, new in zip(numbers, dense):
            if old != new:
                fs.move(f"{root}/{names[fmt](old)}", f"{root}/{names[fmt](new)}")
    return dense


def image_bytes_estimate(rows: int, encoded_bytes: int, image: dict) -> int:
    """The bytes a split's images take in the shards: the encoded bytes, or the arrays of the ndarray codec."""
    if image["codec"] == "ndarray":
        return rows * image["height"] * image["width"] * image["channels"]
    return encoded_bytes
