"""Ingest: image files under an input path -> Delta tables ``images``, ``quarantine`` and ``duplicates``.

Every listed file ends up in exactly one bucket of :class:`IngestCounts`; the run fails if they do not add
up. Only headers are read (format, width, height), never the pixels.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import posixpath
from dataclasses import dataclass
from typing import Iterator, Optional

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from imgshards import imaging, storage, tables
from imgshards.config import PipelineConfig, SplitConfig
from imgshards.schemas import (
    DUPLICATES_SCHEMA,
    DUPLICATES_TABLE,
    IMAGES_SCHEMA,
    IMAGES_TABLE,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
)

log = logging.getLogger(__name__)

INGEST_STAGE = "ingest"

_PROBED_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("content", IMAGES_SCHEMA["content"].dataType, True),
        StructField("sha256", StringType(), True),
        StructField("size_bytes", LongType(), False),
        StructField("format", StringType(), True),
        StructField("width", IntegerType(), True),
        StructField("height", IntegerType(), True),
        StructField("reason", StringType(), True),
        StructField("detail", StringType(), True),
    ]
)


@dataclass
class IngestCounts:
    """What happened to every file seen. ``seen`` equals the sum of the other fields."""

    seen: int = 0
    ingested: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    quarantined: int = 0
    skipped_hidden: int = 0
    skipped_non_image: int = 0
    quarantine_reasons: dict = dataclasses.field(default_factory=dict)

    def accounted(self) -> int:
        return (
            self.ingested
            + self.updated
            + self.unchanged
            + self.duplicates
            + self.quarantined
            + self.skipped_hidden
            + self.skipped_non_image
        )

    def check(self) -> None:
        if self.accounted() != self.seen:
            raise RuntimeError(f"ingest accounting does not add up: seen {self.seen} != accounted {self.accounted()} ({self})")
        if sum(self.quarantine_reasons.values()) != self.quarantined:
            raise RuntimeError(f"quarantine reasons {self.quarantine_reasons} do not add up to {self.quarantined}")


def is_hidden(relative_path: str) -> bool:
    """Hidden the way Spark's file index sees it: a path part starting with '.' or '_'."""
    return any(part.startswith((".", "_")) for part in relative_path.split("/"))


def extension_glob(extensions) -> str:
    """A Hadoop glob matching the extensions case-insensitively: ``*.{[jJ][pP][gG],...}``."""
    alternatives = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext) for ext in extensions]
    return "*.{" + ",".join(alternatives) + "}"


def has_extension(relative_path: str, extensions) -> bool:
    ext = posixpath.splitext(relative_path)[1].lower().lstrip(".")
    return ext in extensions


def label_from_path(relative_path: str) -> Optional[str]:
    """The parent folder's name, or None for files directly under the input root."""
    parent = posixpath.dirname(relative_path)
    return posixpath.basename(parent) if parent else None


def split_column(sha256: F.Column, split: SplitConfig) -> F.Column:
    """train/val/test from the first 32 bits of the content hash: stable across runs and machines."""
    position = F.conv(F.substring(sha256, 1, 8), 16, 10).cast("double") / float(2**32)
    return (
        F.when(position < split.train, F.lit("train"))
        .when(position < split.train + split.val, F.lit("val"))
        .otherwise(F.lit("test"))
    )


def split_of(sha256: str, split: SplitConfig) -> str:
    """The same rule as :func:`split_column`, in Python (for tests and tools)."""
    position = int(sha256[:8], 16) / float(2**32)
    if position < split.train:
        return "train"
    if position < split.train + split.val:
        return "val"
    return "test"


def _probe_batches(batches: Iterator[pd.DataFrame], *, base: str, max_pixels: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body: sha256 + header probe per file; errors become reason/detail, never exceptions."""
    for batch in batches:
        rows = []
        for path, length, content in zip(batch["path"], batch["length"], batch["content"]):
            relative = path[len(base) + 1 :] if path.startswith(base + "/") else posixpath.basename(path)
            row = {"path": path, "label": label_from_path(relative), "size_bytes": int(length), "content": None,
                   "sha256": None, "format": None, "width": None, "height": None, "reason": None, "detail": None}
            if content is None:
                row.update(reason="unreadable", detail="no content returned by the reader")
            else:
                row["sha256"] = hashlib.sha256(content).hexdigest()
                try:
                    info = imaging.probe(content, max_pixels)
                    row.update(content=content, format=info.format, width=info.width, height=info.height)
                except imaging.ImageError as e:
                    row.update(reason=e.reason, detail=e.detail)
            rows.append(row)
        yield pd.DataFrame(rows, columns=_PROBED_SCHEMA.fieldNames())


def read_and_probe(spark: SparkSession, input_root: str, config: PipelineConfig) -> DataFrame:
    """binaryFile over the image files under ``input_root`` (no larger than max_bytes) -> probed rows."""
    base = storage.qualify(spark, input_root).rstrip("/")
    raw = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", extension_glob(config.ingest.extensions))
        .load(input_root)
        # binaryFile pushes this filter down, so oversized files are never read into a row.
        .filter((F.col("length") > 0) & (F.col("length") <= config.ingest.max_bytes))
        .select("path", "length", "content")
    )
    probe = functools.partial(_probe_batches, base=base, max_pixels=config.ingest.max_pixels)
    return raw.mapInPandas(probe, _PROBED_SCHEMA)


def run_ingest(spark: SparkSession, config: PipelineConfig, input_root: str, run_id: str) -> IngestCounts:
    """Ingest every image under ``input_root``; returns the counts (already checked to add up)."""
    counts = IngestCounts()
    rejected = []  # (path, size, reason, detail) decided from the listing alone
    expected_candidates = 0
    for f in storage.list_files(spark, input_root):
        counts.seen += 1
        if is_hidden(f.relative):
            counts.skipped_hidden += 1
        elif not has_extension(f.relative, config.ingest.extensions):
            counts.skipped_non_image += 1
        elif f.size_bytes == 0:
            # Spark's file scan skips empty files, so they are accounted for here.
            rejected.append((f.path, 0, "zero_byte", "0 bytes"))
        elif f.size_bytes > config.ingest.max_bytes:
            rejected.append((f.path, f.size_bytes, "too_large_bytes", f"{f.size_bytes} bytes > max_bytes {config.ingest.max_bytes}"))
        else:
            expected_candidates += 1
    log.info("listed %d files under %s: %d image candidates", counts.seen, input_root, expected_candidates)

    probed = read_and_probe(spark, input_root, config).persist(StorageLevel.DISK_ONLY)
    try:
        probed_count = probed.count()
        if probed_count != expected_candidates:
            raise RuntimeError(
                f"listed {expected_candidates} image files under {input_root} but Spark read {probed_count}; "
                "files changed during the run?"
            )
        _write(spark, config, probed, rejected, counts, run_id)
    finally:
        probed.unpersist()
    counts.check()
    return counts


def _write(spark, config, probed: DataFrame, rejected, counts: IngestCounts, run_id: str) -> None:
    now = F.current_timestamp()
    images_path = config.table_path(IMAGES_TABLE)
    existing = tables.ensure_table(spark, images_path, IMAGES_SCHEMA).toDF().select("path", "sha256")

    bad = probed.filter(F.col("reason").isNotNull())
    if rejected:
        from_listing = spark.createDataFrame(rejected, "path string, size_bytes long, reason string, detail string")
        from_listing = from_listing.withColumn("sha256", F.lit(None).cast("string"))
        bad = bad.select(*from_listing.columns).unionByName(from_listing)
    quarantine = bad.select(
        "path", F.lit(INGEST_STAGE).alias("stage"), "reason", "detail", "size_bytes", "sha256",
        now.alias("quarantined_at"), F.lit(run_id).alias("run_id"),
    )

    good = probed.filter(F.col("reason").isNull())
    unchanged = good.join(existing, ["path", "sha256"], "left_semi")
    rest = good.join(existing, ["path", "sha256"], "left_anti")
    known_sha = existing.groupBy("sha256").agg(F.min("path").alias("existing_path"))
    first_in_batch = F.first("path").over(Window.partitionBy("sha256").orderBy("path"))
    rest = (
        rest.join(known_sha, "sha256", "left")
        .withColumn("_first", first_in_batch)
        .withColumn(
            "duplicate_of",
            F.coalesce(F.col("existing_path"), F.when(F.col("_first") != F.col("path"), F.col("_first"))),
        )
        .drop("_first", "existing_path")
        .persist(StorageLevel.DISK_ONLY)
    )
    try:
        accepted = rest.filter(F.col("duplicate_of").isNull())
        duplicates = rest.filter(F.col("duplicate_of").isNotNull())
        updated_paths = accepted.join(existing.select("path"), "path", "left_semi")

        reasons = {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}
        counts.quarantine_reasons = dict(sorted(reasons.items()))
        counts.quarantined = sum(reasons.values())
        counts.unchanged = unchanged.count()
        counts.duplicates = duplicates.count()
        counts.updated = updated_paths.count()
        counts.ingested = accepted.count() - counts.updated
        counts.check()

        metadata = {"job": "ingest", "run_id": run_id, "config_fingerprint": config.fingerprint("ingest"),
                    "counts": dataclasses.asdict(counts)}
        with tables.commit_metadata(spark, metadata):
            images = accepted.select(
                "path", "label", "content", "sha256", "size_bytes", "format", "width", "height",
                split_column(F.col("sha256"), config.ingest.split).alias("split"),
                now.alias("ingested_at"), F.lit(run_id).alias("run_id"),
            )
            # Keyed on path: a changed file replaces its row; the old content stays reachable by time travel.
            tables.upsert(spark, images_path, IMAGES_SCHEMA, images, ["path"], update_when="t.sha256 <> s.sha256")
            tables.upsert(
                spark, config.table_path(DUPLICATES_TABLE), DUPLICATES_SCHEMA,
                duplicates.select("path", "sha256", "duplicate_of", now.alias("detected_at"), F.lit(run_id).alias("run_id")),
                ["path"], update_when="t.sha256 <> s.sha256 OR t.duplicate_of <> s.duplicate_of",
            )
            tables.upsert(
                spark, config.table_path(QUARANTINE_TABLE), QUARANTINE_SCHEMA, quarantine, ["path", "stage"],
                update_when="NOT (t.reason <=> s.reason) OR NOT (t.sha256 <=> s.sha256)",
            )
    finally:
        rest.unpersist()
