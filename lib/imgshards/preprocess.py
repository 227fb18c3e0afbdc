"""Preprocess: Delta ``images`` -> Delta ``processed`` through an iterator pandas UDF
(decode -> EXIF orientation -> RGB -> resize/crop -> encode). Failures go to ``quarantine`` (stage
``preprocess``). Incremental: rows already processed with the same preprocess settings are skipped."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType

from imgshards import imaging, tables
from imgshards.config import PipelineConfig, PreprocessConfig
from imgshards.schemas import (
    IMAGES_TABLE,
    PROCESSED_SCHEMA,
    PROCESSED_TABLE,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
)

log = logging.getLogger(__name__)

PREPROCESS_STAGE = "preprocess"

_RESULT_TYPE = StructType(
    [
        StructField("image", BinaryType(), True),
        StructField("width", IntegerType(), True),
        StructField("height", IntegerType(), True),
        StructField("backend", StringType(), True),
        StructField("reason", StringType(), True),
        StructField("detail", StringType(), True),
    ]
)


@dataclass
class PreprocessCounts:
    source_version: int = 0
    config_fingerprint: str = ""
    already_processed: int = 0
    processed: int = 0
    quarantined: int = 0
    quarantine_reasons: Optional[dict] = None


def process_series(contents: pd.Series, settings: PreprocessConfig, max_pixels: int) -> pd.DataFrame:
    """One Arrow batch of raw image bytes -> image/width/height/backend/reason/detail columns."""
    rows = []
    for data in contents:
        try:
            image, width, height = imaging.process(
                data, size=settings.size, output_format=settings.output_format, quality=settings.quality,
                max_pixels=max_pixels, draft=settings.draft,
            )
            rows.append((image, width, height, "pil", None, None))
        except imaging.ImageError as e:
            rows.append((None, None, None, "pil", e.reason, e.detail))
    return pd.DataFrame(rows, columns=_RESULT_TYPE.fieldNames())


def process_column(content: Column, settings: PreprocessConfig, max_pixels: int) -> Column:
    """The preprocess transform as a Column: struct(image, width, height, backend, reason, detail)."""

    @F.pandas_udf(_RESULT_TYPE)
    def preprocess_udf(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for contents in batches:
            yield process_series(contents, settings, max_pixels)

    return preprocess_udf(content)


def run_preprocess(
    spark: SparkSession, config: PipelineConfig, run_id: str, as_of_version: Optional[int] = None
) -> PreprocessCounts:
    images, version = tables.read_table(spark, config.table_path(IMAGES_TABLE), as_of_version)
    images = images.filter(F.col("deleted_at").isNull())
    fingerprint = config.fingerprint("preprocess")
    counts = PreprocessCounts(source_version=version, config_fingerprint=fingerprint)
    processed_path = config.table_path(PROCESSED_TABLE)
    done = (
        tables.ensure_table(spark, processed_path, PROCESSED_SCHEMA).toDF()
        .filter(F.col("config_fingerprint") == fingerprint).select("sha256").distinct()
    )
    todo = images.join(done, "sha256", "left_anti")
    results = (
        todo.select("sha256", "path", "label", "split", "size_bytes",
                    process_column(F.col("content"), config.preprocess, config.ingest.max_pixels).alias("r"))
        .select("*", "r.*").drop("r")
        .persist(StorageLevel.DISK_ONLY)
    )
    try:
        counts.already_processed = images.join(done, "sha256", "left_semi").count()
        now = F.current_timestamp()
        ok = results.filter(F.col("reason").isNull())
        failed = results.filter(F.col("reason").isNotNull())
        counts.processed = ok.count()
        reasons = {r["reason"]: r["count"] for r in failed.groupBy("reason").count().collect()}
        counts.quarantine_reasons = dict(sorted(reasons.items()))
        counts.quarantined = sum(reasons.values())
        metadata = {"job": "preprocess", "run_id": run_id, "config_fingerprint": fingerprint,
                    "source_version": version, "counts": {"processed": counts.processed, "quarantined": counts.quarantined}}
        with tables.commit_metadata(spark, metadata):
            tables.upsert(
                spark, processed_path, PROCESSED_SCHEMA,
                ok.select(
                    "sha256", "path", "label", "split", "image",
                    F.lit(config.preprocess.output_format).alias("image_format"), "width", "height",
                    F.lit(fingerprint).alias("config_fingerprint"), F.lit(version).cast("long").alias("source_version"),
                    "backend", now.alias("processed_at"), F.lit(run_id).alias("run_id"),
                ),
                ["sha256", "config_fingerprint"],
            )
            tables.upsert(
                spark, config.table_path(QUARANTINE_TABLE), QUARANTINE_SCHEMA,
                failed.select(
                    "path", F.lit(PREPROCESS_STAGE).alias("stage"), "reason", "detail", "size_bytes", "sha256",
                    now.alias("quarantined_at"), F.lit(run_id).alias("run_id"),
                ),
                ["path", "stage"], update_when="NOT (t.reason <=> s.reason) OR NOT (t.sha256 <=> s.sha256)",
            )
    finally:
        results.unpersist()
    log.info("preprocess: %s", counts)
    return counts


def select_current(processed: DataFrame, images: DataFrame, fingerprint: str) -> DataFrame:
    """Processed samples for the images in ``images`` (one Delta version) made with ``fingerprint``;
    label and split come from ``images`` so they always match the version read."""
    return (
        images.select("sha256", "path", "label", "split")
        .join(processed.filter(F.col("config_fingerprint") == fingerprint).select("sha256", "image"), "sha256")
    )
