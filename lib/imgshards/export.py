"""Export: Delta ``processed`` -> one Petastorm dataset per split, plus classes.json and manifest.json.

The processed images are already JPEG/PNG bytes, which is exactly what Petastorm's CompressedImageCodec
stores, so they are written as they are: no decode and re-encode on the way out.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Optional

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import imgshards
from imgshards import storage, tables
from imgshards.config import PipelineConfig, join_path
from imgshards.preprocess import select_current
from imgshards.schemas import IMAGES_TABLE, PROCESSED_TABLE, SPLITS, export_unischema

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
MANIFEST_FILE = "manifest.json"
UNLABELED_INDEX = -1


@dataclass
class ExportResult:
    output: str
    source_version: int
    classes: list
    counts: dict = field(default_factory=dict)  # split -> class name -> rows


def split_url(output: str, split: str) -> str:
    return join_path(output, split)


def dataset_url(path: str) -> str:
    """Petastorm wants URLs: a bare local path becomes file://."""
    return path if "://" in path else "file://" + path


def run_export(
    spark: SparkSession, config: PipelineConfig, run_id: str, as_of_version: Optional[int] = None
) -> ExportResult:
    from petastorm.etl.dataset_metadata import materialize_dataset

    images, version = tables.read_table(spark, config.table_path(IMAGES_TABLE), as_of_version)
    images = images.filter(F.col("deleted_at").isNull())
    processed, _ = tables.read_table(spark, config.table_path(PROCESSED_TABLE))
    fingerprint = config.fingerprint("preprocess")
    samples = select_current(processed, images, fingerprint)

    classes = sorted(r[0] for r in samples.select("label").distinct().collect() if r[0] is not None)
    label_index = F.create_map(*[F.lit(x) for i, name in enumerate(classes) for x in (name, i)]) if classes else None
    index_column = F.coalesce(label_index[F.col("label")], F.lit(UNLABELED_INDEX)) if classes else F.lit(UNLABELED_INDEX)
    samples = samples.select(
        "split",
        F.col("image"),
        index_column.cast("int").alias("label"),
        F.coalesce(F.col("label"), F.lit("")).alias("label_name"),
        "sha256",
    )

    counts: dict = {split: {} for split in SPLITS}
    for row in samples.groupBy("split", "label_name").count().collect():
        counts[row["split"]][row["label_name"]] = row["count"]

    schema = export_unischema(config.preprocess.size, config.preprocess.output_format)
    output = config.output
    for split in SPLITS:
        url = dataset_url(split_url(output, split))
        rows = samples.filter(F.col("split") == split).select(*schema.fields.keys())
        with materialize_dataset(spark, url, schema, config.export.row_group_size_mb):
            rows.write.mode("overwrite").parquet(url)
        log.info("exported %s: %d rows", url, sum(counts[split].values()))

    manifest = {
        "package_version": imgshards.__version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "run_id": run_id,
        "source": {"table": config.table_path(IMAGES_TABLE), "version": version},
        "processed_table": config.table_path(PROCESSED_TABLE),
        "config_fingerprint": fingerprint,
        "config": config.to_dict(),
        "image": {"height": config.preprocess.size, "width": config.preprocess.size, "channels": 3,
                  "format": config.preprocess.output_format},
        "classes": classes,
        "splits": {
            split: {"url": split_url(output, split), "rows": sum(counts[split].values()), "per_class": counts[split]}
            for split in SPLITS
        },
    }
    storage.write_text(spark, join_path(output, CLASSES_FILE),
                       json.dumps({"classes": [{"index": i, "name": n} for i, n in enumerate(classes)]}, indent=2))
    storage.write_text(spark, join_path(output, MANIFEST_FILE), json.dumps(manifest, indent=2, default=list))
    return ExportResult(output=output, source_version=version, classes=classes, counts=counts)
