"""One batch of files (a whole batch run, or one streaming micro-batch): probe, count, write.
"""
from __future__ import annotations

import copy
import functools
import logging
from collections import Counter
from typing import Optional, Sequence
from urllib.parse import urlparse

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from imgshards import quality
from imgshards.config import PipelineConfig
from imgshards.delta import tables
from imgshards.ingest.counts import IngestCounts
from imgshards.ingest.forget import forgotten_contents
from imgshards.ingest.labels import label_key
from imgshards.ingest.read import INGEST_STAGE, PROBED_SCHEMA, probe_batches
from imgshards.ingest.write import ensure_tables, quarantine_rows, write_batch
from imgshards.observe import progress
from imgshards.runtime.background import Background

log = logging.getLogger(__name__)


def ingest_batch(
    spark: SparkSession,
    config: PipelineConfig,
    files: DataFrame,
    base: str,
    run_id: str,
    *,
    rejected: Sequence[tuple] = (),
    labels: Optional[DataFrame] = None,
    listed: Optional[dict] = None,
) -> IngestCounts:
    """Probe ``files`` (path, length, and content unless they are local: see :func:`listed_files`) and MERGE
    them into the tables. ``rejected`` holds (path, size_bytes, reason, detail) decided before reading (from
    the listing). ``listed`` (path -> size in bytes, the image files the listing found): any of them that
    Spark did not read, because it disappeared between the listing and the read, is quarantined as
    ``unreadable``. Returns checked counts."""
    ingest = config.ingest
    probe = functools.partial(
        probe_batches, base=base, max_pixels=ingest.max_pixels, labels=ingest.labels,
        group_regex=ingest.group_regex, phash=ingest.near_duplicates.enabled, done=progress.images_counter(),
        max_bytes=ingest.max_bytes, crc32=ingest.content == "copy",
    )
    # binaryFile pushes the length filter down: oversized files are never read into a row.
    readable = files.filter(F.col("length") <= ingest.max_bytes)
    oversized = files.filter(F.col("length") > ingest.max_bytes).select(
        "path", F.col("length").alias("size_bytes"), F.lit("too_large_bytes").alias("reason"),
        F.format_string("%d bytes > ingest.max_bytes %d", F.col("length"), F.lit(ingest.max_bytes)).alias("detail"),
    )
    if "content" not in files.columns or urlparse(base).scheme == "file":
        # Local files are read by the Python workers themselves: the bytes do not cross from the JVM through
        # Arrow, which makes the pass faster. Object stores go through Spark's reader
        # and its credentials.
        probed = readable.select("path", "length").mapInPandas(probe, PROBED_SCHEMA)
    else:
        probed = readable.mapInPandas(probe, PROBED_SCHEMA)
    if labels is not None:
        probed = (
            probed.withColumn("label_key", label_key(F.col("relative"), ingest.labels))
            .join(labels, "label_key", "left")
            .withColumn("label", F.col("file_label"))
            .withColumn("group_key", F.coalesce("file_group", "group_key"))
            .drop("label_key", "file_label", "file_group")
        )
    probed = quality.quarantine(probed, ingest.quality)
    if ingest.labels.required:
        unlabeled = F.col("reason").isNull() & F.col("label").isNull()
        no_label = F.lit(f"no label from ingest.labels.source={ingest.labels.source}")
        probed = probed.withColumn("detail", F.when(unlabeled, no_label)
                                   .otherwise(F.col("detail")))
        probed = probed.withColumn("reason", F.when(unlabeled, F.lit("unlabeled")).otherwise(F.col("reason")))
    forgotten = forgotten_contents(spark, config)
    if forgotten is not None:  # contents removed by the forget job are refused, never taken again
        refused = F.col("reason").isNull() & F.col("_forgotten").isNotNull()
        probed = (probed.join(F.broadcast(forgotten.withColumnRenamed("reason", "_forgotten")), "sha256", "left")
                  .withColumn("detail", F.when(refused, F.concat(F.lit("forgotten: "), "_forgotten")).otherwise(F.col("detail")))
                  .withColumn("reason", F.when(refused, F.lit("forgotten")).otherwise(F.col("reason")))
                  .drop("_forgotten"))
    probed = probed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = IngestCounts(batches=1)
        # The one pass over the files' bytes (sha256, probe, dHash) also gives every count it decides.
        read = probed_ok = 0
        reasons: Counter = Counter(reason for _, _, reason, _ in rejected)
        # While the executors probe, the driver opens (or creates) the three tables ingest writes: a JVM's
        # first Delta operation loads Delta's classes and log machinery (seconds), and each creation is a
        # commit of its own, all of which would otherwise follow the pass.
        opening = Background(INGEST_STAGE, ensure_tables, spark, config)
        outcomes = _outcomes(probed, oversized).collect()
        opening.wait()  # an error is write_batch's to raise: it opens the tables again
        for row in outcomes:
            read += row["count"]
            counts.read_bytes += row["read_bytes"] or 0
            if row["reason"] is None:
                probed_ok = row["count"]
            else:
                reasons[row["reason"]] += row["count"]
        if listed is not None and read < len(listed):
            vanished = _vanished(listed, probed, oversized)
            rejected = list(rejected) + vanished
            reasons.update(reason for _, _, reason, _ in vanished)
        counts.seen = read + len(rejected)
        counts.quarantine_reasons = dict(sorted(reasons.items()))
        counts.quarantined = sum(reasons.values())
        quarantine = quarantine_rows(spark, probed, oversized, rejected, run_id)
        # A conflict with a concurrent writer redoes the write from the tables' new version: files another
        # run ingested meanwhile become unchanged rows or duplicates, never a second copy.
        # Each attempt counts on a copy of the probe's counts: what write_batch adds (buckets, conflicts, the
        # quarantined label conflicts) must not be added twice. The images rows an attempt wrote before its
        # conflict are still this run's: the next attempt counts them as written, not as unchanged.
        committed: Counter = Counter()

        def attempt() -> IngestCounts:
            written = copy.deepcopy(counts)
            write_batch(spark, config, readable, probed, probed_ok, quarantine, written, run_id, committed)
            return written

        counts = tables.retry_on_conflict("ingest", attempt)
    finally:
        probed.unpersist()
    counts.check()
    return counts


def _outcomes(probed: DataFrame, oversized: DataFrame) -> DataFrame:
    """(reason, count, read_bytes) over the probed files and the oversized ones (which are never read)."""
    files = probed.select("reason", F.col("size_bytes").alias("read")).unionByName(
        oversized.select("reason", F.lit(0).cast("long").alias("read")))
    return files.groupBy("reason").agg(F.count(F.lit(1)).alias("count"), F.sum("read").alias("read_bytes"))


def _vanished(listed: dict, probed: DataFrame, oversized: DataFrame) -> list:
    """Rejections for the listed files Spark did not read (gone between the listing and the read; the
    scan skips missing files instead of failing the job). Only run when the counts say some are missing."""
    read = {r["path"] for r in probed.select("path").union(oversized.select("path")).collect()}
    gone = sorted(set(listed) - read)
    log.warning("%d listed file(s) were gone when read, quarantined as unreadable, e.g. %s", len(gone), gone[:3])
    return [(path, listed[path], "unreadable", "listed, then gone before it was read") for path in gone]
