"""Export: Delta ``processed`` -> one Petastorm dataset per split (and the MDS and WebDataset shards of
``export.formats``, :mod:`.shards`), plus classes.json and manifest.json.

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
import posixpath
from dataclasses import dataclass, field
from typing import Optional

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import imgshards
from imgshards.config import ConfigError, PipelineConfig, join_path
from imgshards.delta import tables
from imgshards.export.petastorm import dataset_url, decode_to_npy, write_dataset
from imgshards.export.publish import prune, publish_manifest
from imgshards.export.shards import SHARD_FORMATS, image_bytes_estimate, write_shards
from imgshards.export.stats import normalization_stats
from imgshards.export.unischema import export_schema_summary, export_unischema_pickle
from imgshards.io import storage
from imgshards.manifest import CLASSES_FILE, MANIFEST_FILE, VERSION_PREFIX, Manifest, classes_json
from imgshards.preprocess.samples import select_current
from imgshards.runtime.background import Background
from imgshards.schemas import EXPORT_COLUMNS, IMAGES_TABLE, PROCESSED_TABLE, SPLITS

log = logging.getLogger(__name__)

UNLABELED_INDEX = -1


@dataclass
class ExportResult:
    output: str
    version_dir: str
    source_version: int
    classes: list
    counts: dict = field(default_factory=dict)  # split -> class name -> rows
    rows: dict = field(default_factory=dict)  # split -> rows
    read_bytes: int = 0  # encoded images read from processed
    written_bytes: int = 0  # files written, all splits and formats
    kept: bool = False  # the published version already held these samples; nothing was written (pipeline)
    published: bool = True  # False: a newer export was published meanwhile, and this one left unpublished


def run_export(
    spark: SparkSession, config: PipelineConfig, run_id: str, as_of_version: Optional[int] = None
) -> ExportResult:
    # Every pass over the samples (the counts, the channel statistics, the writes) runs in the tasks of the
    # cached scan of `processed`: packed into 128 MB tasks, 350 MB was 3 tasks on 2 cores, the last alone.
    with tables.spread_scans(spark):
        return _export(spark, config, run_id, as_of_version)


def _export(spark: SparkSession, config: PipelineConfig, run_id: str, as_of_version: Optional[int]) -> ExportResult:
    finished = join_path(config.output, VERSION_PREFIX + run_id, MANIFEST_FILE)
    if storage.read_text(spark, finished) is not None:
        # (a folder that a killed export left without its manifest is simply written again)
        raise ConfigError(f"run id {run_id!r} already made the export {posixpath.dirname(finished)}: a finished "
                          "version is never rewritten in place; run with a new --run-id")
    images, version = tables.read_table(spark, config.table(IMAGES_TABLE), as_of_version)
    images = images.filter(F.col("deleted_at").isNull())
    processed, _ = tables.read_table(spark, config.table(PROCESSED_TABLE))
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
        split_bytes: dict = {split: 0 for split in SPLITS}
        read_bytes = written_bytes = 0
        # One aggregation: the rows per split and class, the augmented copies, the bytes, the classes.
        outcomes = samples.groupBy("split", "label", (F.col("copy") > 0).alias("augmented")).agg(
            F.count(F.lit(1)).alias("count"), F.sum(F.length("image")).alias("bytes")).collect()
        classes = sorted({row["label"] for row in outcomes if row["label"] is not None})
        for row in outcomes:
            read_bytes += row["bytes"] or 0
            split_bytes[row["split"]] += row["bytes"] or 0
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
        image = {"height": config.preprocess.size, "width": config.preprocess.size, "channels": 3,
                 "format": config.preprocess.output_format, "codec": export.codec}
        shard_formats = tuple(f for f in export.formats if f in SHARD_FORMATS)
        unischema = export_unischema_pickle(config.preprocess.size, config.preprocess.output_format, export.codec)
        output = config.output
        version_name = VERSION_PREFIX + run_id
        version_dir = join_path(output, version_name)
        splits = {}
        for split in SPLITS:
            url = dataset_url(join_path(version_dir, split))
            rows = labelled.filter(F.col("split") == split).select(*EXPORT_COLUMNS)
            if export.codec == "ndarray" and config.preprocess.output_format != "raw":
                rows = rows.mapInPandas(decode_to_npy, rows.schema)
            # Shuffled before writing, so every row group mixes classes.
            shuffled = rows.repartition(export.files_per_split).sortWithinPartitions(F.rand(export.shuffle_seed))
            groups, parquet_bytes = write_dataset(spark, shuffled, url, unischema, export.row_group_size_mb)
            written_bytes += parquet_bytes
            expected = sum(counts[split].values())
            splits[split] = {"path": f"{version_name}/{split}", "rows": expected, "per_class": counts[split],
                             "augmented": augmented[split], "bytes": parquet_bytes, "row_groups": groups}
            if shard_formats:
                formats = write_shards(spark, rows, version_dir, version_name, split, formats=shard_formats,
                                       export=export, image=image, expected_rows=expected,
                                       estimated_bytes=image_bytes_estimate(expected, split_bytes[split], image))
                written_bytes += sum(entry["bytes"] for entry in formats.values())
                splits[split]["formats"] = formats
            if sum(g["rows"] for g in groups) != splits[split]["rows"]:
                raise RuntimeError(f"{url}: row groups hold {sum(g['rows'] for g in groups)} rows, "
                                   f"expected {splits[split]['rows']}")
            log.info("exported %s: %d rows in %d row groups", url, splits[split]["rows"], len(groups))
        stats = statistics.result()
    finally:
        if statistics is not None:  # done, or the writes failed: it finishes before its input goes
            statistics.wait()
        samples.unpersist()

    manifest = Manifest(
        run_id=run_id,
        version_dir=version_name,
        source={"table": str(config.table(IMAGES_TABLE)), "version": version},
        classes=classes,
        splits=splits,
        image=image,
        formats=list(export.formats),
        config_fingerprint=fingerprint,
        augment_fingerprint=config.augment_fingerprint() if config.preprocess.augment.enabled else None,
        processed_table=str(config.table(PROCESSED_TABLE)),
        package_version=imgshards.__version__,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        config=config.to_dict(),
        schema=export_schema_summary(config.preprocess.size, config.preprocess.output_format, config.export.codec),
        normalization=stats,
    )
    storage.write_text(spark, join_path(version_dir, MANIFEST_FILE), manifest.to_json(version_name))
    storage.write_text(spark, join_path(version_dir, CLASSES_FILE), classes_json(classes))
    was_published = publish_manifest(spark, output, manifest.to_json(), run_id)
    if was_published:
        storage.write_text(spark, join_path(output, CLASSES_FILE), classes_json(classes))
    removed = prune(spark, output, export.keep_versions, version_name)
    if removed:
        log.info("export: removed the older versions %s", ", ".join(removed))
    return ExportResult(published=was_published, output=output, version_dir=version_dir, source_version=version,
                        classes=classes, counts=counts,
                        rows={split: info["rows"] for split, info in splits.items()}, read_bytes=read_bytes,
                        written_bytes=written_bytes)


def published_as_is(spark: SparkSession, config: PipelineConfig, source_version: int) -> Optional[ExportResult]:
    """The export published at ``config.output`` when it is what an export of ``images`` version
    ``source_version`` with these settings would write again (same table, version, fingerprints and export
    settings, its version folder still there), else None. For a pipeline run in which ingest changed nothing
    and preprocess made nothing: the samples of that version are then exactly the published ones."""
    text = storage.read_text(spark, join_path(config.output, MANIFEST_FILE))
    if text is None:
        return None
    manifest = Manifest.from_json(text, join_path(config.output, MANIFEST_FILE))
    augment = config.augment_fingerprint() if config.preprocess.augment.enabled else None
    export_settings = json.loads(json.dumps(config.to_dict()["export"], default=list))
    if (manifest.source != {"table": str(config.table(IMAGES_TABLE)), "version": source_version}
            or manifest.config_fingerprint != config.output_fingerprint()
            or manifest.augment_fingerprint != augment
            or manifest.config.get("export") != export_settings):
        return None
    version_dir = join_path(config.output, manifest.version_dir)
    if storage.read_text(spark, join_path(version_dir, MANIFEST_FILE)) is None:
        return None
    splits = manifest.splits
    return ExportResult(output=config.output, version_dir=version_dir, source_version=source_version,
                        classes=manifest.classes, counts={split: info["per_class"] for split, info in splits.items()},
                        rows={split: info["rows"] for split, info in splits.items()}, kept=True)
