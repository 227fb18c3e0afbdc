"""Export: Delta ``processed`` -> one Petastorm dataset per split, plus classes.json and manifest.json.

Each export is written into a new version folder ``<output>/v-<run_id>/`` and published by atomically
replacing ``<output>/manifest.json``, which names that folder: a reader never sees a half-written dataset,
a reader that opened the previous version keeps reading it whole, and the last ``export.keep_versions``
versions are kept. A manifest names its files relative to its own folder, so a copy of the export (another
folder, another bucket, S3 -> local disk) reads the same.

With the default ``compressed`` codec the processed JPEG/PNG bytes are written as they are (that is what
Petastorm's CompressedImageCodec stores); ``ndarray`` stores decoded uint8 arrays (NdarrayCodec).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import imgshards
from imgshards import imaging, storage, tables
from imgshards.background import Background
from imgshards.config import PipelineConfig, join_path
from imgshards.filesystems import is_object_store
from imgshards.preprocess import select_current
from imgshards.schemas import IMAGES_TABLE, PROCESSED_TABLE, SPLITS, export_unischema

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
MANIFEST_FILE = "manifest.json"
UNLABELED_INDEX = -1
VERSION_PREFIX = "v-"


@dataclass
class ExportResult:
    output: str
    version_dir: str
    source_version: int
    classes: list
    counts: dict = field(default_factory=dict)  # split -> class name -> rows
    rows: dict = field(default_factory=dict)  # split -> rows
    read_bytes: int = 0  # encoded images read from processed
    written_bytes: int = 0  # Parquet files written, all splits
    kept: bool = False  # the published version already held these samples; nothing was written (pipeline)


MANIFEST_FORMAT = 2  # 2: split paths relative to the manifest's folder; 1 (no field): absolute URLs


def dataset_url(path: str) -> str:
    """Petastorm wants URLs: a bare local path becomes file://."""
    return path if "://" in path else "file://" + path


def _materialize(spark: SparkSession, url: str, schema, row_group_size_mb: int):
    """Petastorm's ``materialize_dataset`` for ``url``, object stores included (imgshards.petastorm_fs)."""
    from petastorm.etl.dataset_metadata import materialize_dataset

    from imgshards.petastorm_fs import petastorm_location

    location, factory = petastorm_location(url, *storage.s3_settings(spark))
    return materialize_dataset(spark, location, schema, row_group_size_mb, filesystem_factory=factory)


def _decode_to_npy(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body for the ndarray codec: JPEG/PNG bytes -> np.save bytes of the RGB uint8 array."""
    for batch in batches:
        yield batch.assign(image=[imaging.encode(imaging.decode_rgb(data), "raw", 0) for data in batch["image"]])


_LEVELS = np.arange(256, dtype=np.int64)


def _channel_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: per-channel sum and sum of squares of the 0..255 pixel values, and pixel count.
    Integers, so the totals (and the statistics) do not depend on how rows fell into partitions. From a
    histogram per channel (imaging.channel_histogram): 0.4 ms a 224 px JPEG with its decode, where summing
    int64 copies of the pixels took 1.8 ms."""
    histogram = np.zeros((3, 256), np.int64)
    for batch in batches:
        for data in batch["image"]:
            histogram += imaging.channel_histogram(data)
    sums, squares = histogram @ _LEVELS, histogram @ (_LEVELS * _LEVELS)
    yield pd.DataFrame([{"s0": sums[0], "s1": sums[1], "s2": sums[2],
                         "q0": squares[0], "q1": squares[1], "q2": squares[2], "n": int(histogram[0].sum())}])


def normalization_stats(train: DataFrame) -> Optional[dict]:
    """Per-channel mean and std of the train split's pixels (scaled to [0, 1]), or None if it is empty."""
    schema = "s0 long, s1 long, s2 long, q0 long, q1 long, q2 long, n long"
    total = train.select("image").mapInPandas(_channel_sums, schema).groupBy().sum().head()
    n = total["sum(n)"] if total else 0
    if not n:
        return None
    mean = [total[f"sum(s{c})"] / n / 255.0 for c in range(3)]
    std = [max(total[f"sum(q{c})"] / n / 255.0**2 - mean[c] ** 2, 0.0) ** 0.5 for c in range(3)]
    return {"mean": mean, "std": std, "pixels": n}


def row_groups(spark: SparkSession, url: str) -> tuple[list, int]:
    """The Parquet row groups of a written split, in file order ([{file, index, rows}]), and the bytes
    of its Parquet files."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = storage.arrow_fs(spark, url)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    files = sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet"))
    groups = []
    for path in files:
        with fs.open_input_file(path) as f:
            metadata = pq.ParquetFile(f).metadata
        for index in range(metadata.num_row_groups):
            groups.append({"file": os.path.basename(path), "index": index, "rows": metadata.row_group(index).num_rows})
    return groups, sum(i.size for i in infos if i.is_file and i.path.endswith(".parquet"))


def publish_manifest(spark: SparkSession, output: str, text: str) -> None:
    """Replace ``<output>/manifest.json`` so that readers always find one, the old or the new: locally by
    os.replace, on object stores by one PUT (which replaces an object atomically), elsewhere (HDFS) by a
    write and a rename."""
    target = join_path(output, MANIFEST_FILE)
    if "://" not in output:
        temporary = target + ".tmp"
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, target)
    elif is_object_store(output):
        storage.write_text(spark, target, text)
    else:
        temporary = target + ".tmp"
        storage.write_text(spark, temporary, text)
        storage.delete(spark, target)
        storage.rename(spark, temporary, target)


def _previous_versions(spark: SparkSession, output: str) -> list:
    """The version folders under ``output``, oldest first (by the time their manifest was written)."""
    import pyarrow.fs as pafs

    fs, root = storage.arrow_fs(spark, output)
    folders = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
               if i.type == pafs.FileType.Directory and i.base_name.startswith(VERSION_PREFIX)]
    manifests = fs.get_file_info([f"{i.path}/{MANIFEST_FILE}" for i in folders])
    written = [(m.mtime_ns if m.type == pafs.FileType.File else 0, f.base_name) for f, m in zip(folders, manifests)]
    return [name for _, name in sorted(written)]


def _manifest_text(manifest: dict, prefix: str) -> str:
    """The manifest with each split's path relative to the folder it is written in (``prefix``: that folder
    relative to the export root, "" for the root itself)."""
    splits = {name: {**info, "path": posixpath.relpath(info["path"], prefix or ".")}
              for name, info in manifest["splits"].items()}
    return json.dumps({**manifest, "splits": splits}, indent=2, default=list)


def published_as_is(spark: SparkSession, config: PipelineConfig, source_version: int) -> Optional[ExportResult]:
    """The export published at ``config.output`` when it is what an export of ``images`` version
    ``source_version`` with these settings would write again (same table, version, fingerprints and export
    settings, its version folder still there), else None. For a pipeline run in which ingest changed nothing
    and preprocess made nothing: the samples of that version are then exactly the published ones."""
    text = storage.read_text(spark, join_path(config.output, MANIFEST_FILE))
    if text is None:
        return None
    manifest = json.loads(text)
    augment = config.augment_fingerprint() if config.preprocess.augment.enabled else None
    export_settings = json.loads(json.dumps(config.to_dict()["export"], default=list))
    if (manifest.get("source") != {"table": config.table_path(IMAGES_TABLE), "version": source_version}
            or manifest.get("config_fingerprint") != config.output_fingerprint()
            or manifest.get("augment_fingerprint") != augment
            or manifest.get("config", {}).get("export") != export_settings):
        return None
    version_dir = join_path(config.output, manifest["version_dir"])
    if storage.read_text(spark, join_path(version_dir, MANIFEST_FILE)) is None:
        return None
    splits = manifest["splits"]
    return ExportResult(output=config.output, version_dir=version_dir, source_version=source_version,
                        classes=manifest["classes"], counts={split: info["per_class"] for split, info in splits.items()},
                        rows={split: info["rows"] for split, info in splits.items()}, kept=True)


def run_export(
    spark: SparkSession, config: PipelineConfig, run_id: str, as_of_version: Optional[int] = None
) -> ExportResult:
    # Every pass over the samples (the counts, the channel statistics, the writes) runs in the tasks of the
    # cached scan of `processed`: packed into 128 MB tasks, 350 MB was 3 tasks on 2 cores, the last alone.
    with tables.spread_scans(spark):
        return _export(spark, config, run_id, as_of_version)


def _export(spark: SparkSession, config: PipelineConfig, run_id: str, as_of_version: Optional[int]) -> ExportResult:
    images, version = tables.read_table(spark, config.table_path(IMAGES_TABLE), as_of_version)
    images = images.filter(F.col("deleted_at").isNull())
    processed, _ = tables.read_table(spark, config.table_path(PROCESSED_TABLE))
    fingerprint = config.output_fingerprint()
    live = images.count()
    sample_id = F.when(F.col("copy") == 0, F.col("sha256")).otherwise(F.concat_ws("-", "sha256", "copy"))
    samples = select_current(processed, images, config, broadcast=live <= tables.BROADCAST_ROWS).select(
        "split", "image", "label", sample_id.alias("sample_id"), "sha256", "copy", "augment_seed",
    ).persist()
    statistics = None
    try:
        counts: dict = {split: {} for split in SPLITS}
        augmented: dict = {split: 0 for split in SPLITS}
        read_bytes = written_bytes = 0
        # One aggregation: the rows per split and class, the augmented copies, the bytes, the classes.
        outcomes = samples.groupBy("split", "label", (F.col("copy") > 0).alias("augmented")).agg(
            F.count(F.lit(1)).alias("count"), F.sum(F.length("image")).alias("bytes")).collect()
        classes = sorted({row["label"] for row in outcomes if row["label"] is not None})
        for row in outcomes:
            read_bytes += row["bytes"] or 0
            per_class, name = counts[row["split"]], row["label"] or ""
            per_class[name] = per_class.get(name, 0) + row["count"]
            augmented[row["split"]] += row["count"] if row["augmented"] else 0
        if classes:
            label_index = F.create_map(*[F.lit(x) for i, name in enumerate(classes) for x in (name, i)])
            index_column = F.coalesce(label_index[F.col("label")], F.lit(UNLABELED_INDEX))
        else:
            index_column = F.lit(UNLABELED_INDEX)
        labelled = samples.select(*(c for c in samples.columns if c != "label"), index_column.cast("int").alias("label"),
                                  F.coalesce(F.col("label"), F.lit("")).alias("label_name"))
        # The channel statistics (a decode of every train sample) run beside the writes, which leave a core
        # to spare while the driver plans and Petastorm reads back its metadata.
        statistics = Background("export", normalization_stats, samples.filter(F.col("split") == "train"))

        export = config.export
        schema = export_unischema(config.preprocess.size, config.preprocess.output_format, export.codec)
        output = config.output
        version_name = VERSION_PREFIX + run_id
        version_dir = join_path(output, version_name)
        splits = {}
        for split in SPLITS:
            url = dataset_url(join_path(version_dir, split))
            rows = labelled.filter(F.col("split") == split).select(*schema.fields.keys())
            if export.codec == "ndarray" and config.preprocess.output_format != "raw":
                rows = rows.mapInPandas(_decode_to_npy, rows.schema)
            # Shuffled before writing, so every row group mixes classes.
            rows = rows.repartition(export.files_per_split).sortWithinPartitions(F.rand(export.shuffle_seed))
            with _materialize(spark, url, schema, export.row_group_size_mb):
                rows.write.mode("overwrite").parquet(url)
            groups, split_bytes = row_groups(spark, url)
            written_bytes += split_bytes
            splits[split] = {"path": f"{version_name}/{split}", "rows": sum(counts[split].values()), "per_class": counts[split],
                             "augmented": augmented[split], "bytes": split_bytes, "row_groups": groups}
            if sum(g["rows"] for g in groups) != splits[split]["rows"]:
                raise RuntimeError(f"{url}: row groups hold {sum(g['rows'] for g in groups)} rows, "
                                   f"expected {splits[split]['rows']}")
            log.info("exported %s: %d rows in %d row groups", url, splits[split]["rows"], len(groups))
        stats = statistics.result()
    finally:
        if statistics is not None:  # done, or the writes failed: it finishes before its input goes
            statistics.wait()
        samples.unpersist()

    manifest = {
        "manifest_format": MANIFEST_FORMAT,
        "package_version": imgshards.__version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "run_id": run_id,
        "version_dir": version_name,
        "source": {"table": config.table_path(IMAGES_TABLE), "version": version},
        "processed_table": config.table_path(PROCESSED_TABLE),
        "config_fingerprint": fingerprint,
        "augment_fingerprint": config.augment_fingerprint() if config.preprocess.augment.enabled else None,
        "config": config.to_dict(),
        "image": {"height": config.preprocess.size, "width": config.preprocess.size, "channels": 3,
                  "format": config.preprocess.output_format, "codec": export.codec},
        "schema": {name: {"dtype": np.dtype(f.numpy_dtype).name, "shape": list(f.shape), "codec": str(f.codec)}
                   for name, f in schema.fields.items()},
        "normalization": stats,
        "classes": classes,
        "splits": splits,
    }
    classes_text = json.dumps({"classes": [{"index": i, "name": n} for i, n in enumerate(classes)]}, indent=2)
    storage.write_text(spark, join_path(version_dir, MANIFEST_FILE), _manifest_text(manifest, version_name))
    storage.write_text(spark, join_path(version_dir, CLASSES_FILE), classes_text)
    storage.write_text(spark, join_path(output, CLASSES_FILE), classes_text)
    publish_manifest(spark, output, _manifest_text(manifest, ""))
    for old in _previous_versions(spark, output)[: -export.keep_versions]:
        if old != version_name:  # the version just published is never removed
            storage.delete(spark, join_path(output, old))
    return ExportResult(output=output, version_dir=version_dir, source_version=version, classes=classes, counts=counts,
                        rows={split: info["rows"] for split, info in splits.items()}, read_bytes=read_bytes,
                        written_bytes=written_bytes)
