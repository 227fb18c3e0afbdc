"""Writing one batch: the probed files sorted into buckets against the table, then MERGEs of only what
changes into ``images``, ``duplicates`` and ``quarantine``; and marking vanished files deleted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections import Counter
from typing import Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StructField, StructType

from imgshards import quality
from imgshards.config import PipelineConfig
from imgshards.delta import tables
from imgshards.ingest import label_conflicts, near_duplicates
from imgshards.ingest.counts import IngestCounts
from imgshards.ingest.read import INGEST_STAGE, with_local_contents
from imgshards.ingest.rules import EXAMPLES, split_column, split_key_column
from imgshards.ingest.state import TRANSIENT_REASONS
from imgshards.schemas import (
    DUPLICATES_SCHEMA,
    DUPLICATES_TABLE,
    IMAGES_ADDED_COLUMNS,
    IMAGES_SCHEMA,
    IMAGES_TABLE,
    QUARANTINE_CHANGED,
    QUARANTINE_KEYS,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
)

log = logging.getLogger(__name__)


_INGEST_TABLES = ((IMAGES_TABLE, IMAGES_SCHEMA), (QUARANTINE_TABLE, QUARANTINE_SCHEMA), (DUPLICATES_TABLE, DUPLICATES_SCHEMA))


def ensure_tables(spark: SparkSession, config: PipelineConfig) -> None:
    for name, schema in _INGEST_TABLES:
        tables.ensure_table(spark, config.table(name), schema, IMAGES_ADDED_COLUMNS if name == IMAGES_TABLE else ())


def quarantine_rows(spark, probed: DataFrame, oversized: DataFrame, rejected, run_id: str) -> DataFrame:
    columns = ["path", "size_bytes", "reason", "detail", "sha256"]
    bad = probed.filter(F.col("reason").isNotNull()).select(*columns)
    bad = bad.unionByName(oversized.withColumn("sha256", F.lit(None).cast("string")).select(*columns))
    if rejected:
        listed = spark.createDataFrame(list(rejected), "path string, size_bytes long, reason string, detail string")
        bad = bad.unionByName(listed.withColumn("sha256", F.lit(None).cast("string")).select(*columns))
    return bad.select(
        "path", F.lit(INGEST_STAGE).alias("stage"), "reason", "detail", "size_bytes", "sha256",
        F.current_timestamp().alias("quarantined_at"), F.lit(run_id).alias("run_id"),
    )


BUCKETS_WRITTEN = ("ingested", "updated")


def _classified(probed: DataFrame, table: DataFrame, quarantine: DataFrame) -> DataFrame:
    """The probed files that passed, each with its ``bucket`` (unchanged, duplicates, updated, ingested)
    against the table's rows, and ``duplicate_of`` for the duplicates: the live path that has the content
    already, or the first path (in path order) that has it in this batch. A live row whose file, in this
    batch, holds other content or is unusable (``quarantine``, but for read failures) no longer holds its
    content: a copy of it is not its duplicate but takes its place."""
    known = table.select("path", F.col("sha256").alias("_known_sha256"), F.col("deleted_at").isNull().alias("_known_live"))
    live = table.filter(F.col("deleted_at").isNull())
    changed = (probed.filter(F.col("reason").isNull()).select("path", F.col("sha256").alias("_now"))
               .join(live.select("path", "sha256"), "path").filter(F.col("_now") != F.col("sha256")).select("path"))
    known_sha = (live.join(changed.union(_unusable(quarantine)), "path", "left_anti")
                 .groupBy("sha256").agg(F.min("path").alias("_existing_path")))
    # Unchanged rows take part in the window harmlessly: their content is live, so any other row with it
    # gets the live path first.
    first_in_batch = F.first("path").over(Window.partitionBy("sha256").orderBy("path"))
    unchanged = F.coalesce((F.col("_known_sha256") == F.col("sha256")) & F.col("_known_live"), F.lit(False))
    return (
        probed.filter(F.col("reason").isNull())
        .join(known, "path", "left")
        .join(known_sha, "sha256", "left")
        .withColumn("_first", first_in_batch)
        .withColumn("duplicate_of",
                    F.coalesce(F.col("_existing_path"), F.when(F.col("_first") != F.col("path"), F.col("_first"))))
        .withColumn("bucket", F.when(unchanged, F.lit("unchanged"))
                    .when(F.col("duplicate_of").isNotNull(), F.lit("duplicates"))
                    .when(F.col("_known_sha256").isNotNull(), F.lit("updated"))
                    .otherwise(F.lit("ingested")))
        .drop("_first", "_existing_path", "_known_sha256", "_known_live")
    )


def write_batch(spark, config: PipelineConfig, files: DataFrame, probed: DataFrame, probed_ok: int, quarantine: DataFrame,
                counts: IngestCounts, run_id: str, committed: Counter) -> None:
    """Sort the probed files into buckets against the tables' latest version (one aggregation gives every
    count), then write only what changes: a re-run that finds nothing new commits nothing.

    ``committed`` carries, from one attempt to the next (a Delta conflict retries the write), the ``images``
    rows earlier attempts of this batch wrote by bucket: a later attempt finds them unchanged, and counts them
    where they were written."""
    ingest = config.ingest
    now = F.current_timestamp()
    images_table = config.table(IMAGES_TABLE)
    tables.ensure_table(spark, images_table, IMAGES_SCHEMA, IMAGES_ADDED_COLUMNS)
    # Pinned to the version read: a write into the table makes Spark recompute the cached plans over it, and
    # the classification (which the later writes are joined to) must not change under them.
    read_version = tables.latest_version(spark, images_table)
    table = tables.at_version(spark, images_table, read_version)
    classified = (_classified(probed, table, quarantine)
                  .withColumn("split", split_column(split_key_column(F.col("sha256"), F.col("group_key")), ingest.split))
                  .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        buckets: Counter = Counter()
        unlabeled = 0
        for r in classified.groupBy("bucket", F.col("label").isNull().alias("unlabeled")).count().collect():
            buckets[r["bucket"]] += r["count"]
            unlabeled += r["count"] if r["unlabeled"] and r["bucket"] in BUCKETS_WRITTEN else 0
        if sum(buckets.values()) != probed_ok:
            raise RuntimeError(f"ingest sorted {sum(buckets.values())} files into buckets, but {probed_ok} passed the probe")
        counts.unchanged, counts.duplicates = buckets["unchanged"], buckets["duplicates"]
        counts.updated, counts.ingested = buckets["updated"], buckets["ingested"]
        for bucket in BUCKETS_WRITTEN:  # written by an earlier attempt, found unchanged by this one
            moved = min(committed[bucket], counts.unchanged)
            counts.unchanged -= moved
            setattr(counts, bucket, getattr(counts, bucket) + moved)
        counts.check()
        accepted = classified.filter(F.col("bucket").isin(*BUCKETS_WRITTEN))
        duplicates = classified.filter(F.col("bucket") == "duplicates")
        sorted_out = classified  # the files whose bucket stands (a quarantined label conflict's does not)
        live = table.filter(F.col("deleted_at").isNull())
        # (One statement of two managers, not a parenthesized group: Python 3.9 runs the Spark 3.5 stack.)
        with _clustered(spark, config, accepted, live, counts) as (accepted, clustered), \
                label_conflicts.found(live, accepted, duplicates, clustered, counts) as (conflicts, in_conflict):
            if in_conflict and ingest.label_conflicts == "quarantine":
                quarantine = quarantine.unionByName(label_conflicts.quarantine(conflicts, in_conflict, counts, run_id))
                moved = conflicts.select("path")
                sorted_out, accepted, duplicates = (frame.join(moved, "path", "left_anti")
                                                    for frame in (classified, accepted, duplicates))
            elif clustered and ingest.label_conflicts == "majority":
                accepted = label_conflicts.majority(accepted)
            if counts.ingested + counts.updated:
                counts.quality = quality.counts(accepted, ingest.quality)
            if ingest.labels.source != "none":
                examples = (accepted.filter(F.col("label").isNull()).select("path").limit(EXAMPLES).collect()
                            if unlabeled else [])
                counts.labels_report.update(
                    files_without_label=unlabeled + counts.quarantine_reasons.get("unlabeled", 0),
                    files_without_label_examples=[r[0] for r in examples])
            metadata = {"job": "ingest", "run_id": run_id, "config_fingerprint": config.fingerprint("ingest"),
                        "counts": {k: v for k, v in dataclasses.asdict(counts).items() if isinstance(v, int)}}
            with tables.commit_metadata(spark, metadata):
                # images first: its MERGE is what conflicts with a concurrent ingest of the same content.
                if counts.ingested + counts.updated:
                    _write_rows(spark, config, files, accepted, counts, run_id, committed, read_version)
                if in_conflict:
                    label_conflicts.record(spark, config, conflicts, run_id)
                if counts.duplicates:
                    tables.upsert(
                        spark, config.table(DUPLICATES_TABLE), DUPLICATES_SCHEMA,
                        duplicates.select("path", "sha256", "duplicate_of", now.alias("detected_at"),
                                          F.lit(run_id).alias("run_id")),
                        ["path"], update_when="t.sha256 <> s.sha256 OR t.duplicate_of <> s.duplicate_of",
                        check_first=True, run_id=run_id,
                    )
                if counts.quarantined:
                    tables.upsert(spark, config.table(QUARANTINE_TABLE), QUARANTINE_SCHEMA, quarantine,
                                  QUARANTINE_KEYS, update_when=QUARANTINE_CHANGED, check_first=True, run_id=run_id)
                counts.superseded = _follow_the_files(spark, config, sorted_out, quarantine)
    finally:
        classified.unpersist()


def _unusable(quarantine: DataFrame) -> DataFrame:
    """The paths of the batch's quarantine rows that say something about the content (not a read failure)."""
    return quarantine.filter(~F.col("reason").isin(*TRANSIENT_REASONS)).select("path")


def _follow_the_files(spark, config: PipelineConfig, classified: DataFrame, quarantine: DataFrame) -> dict:
    """Retire the rows that this batch's verdicts supersede, so that every path is where its file is now:
    a file that passes leaves ``quarantine`` and ``duplicates`` (a file cut short once and complete later, the
    copy of an original that is gone); a duplicate leaves ``quarantine``; a live row in ``images`` whose file
    now holds other content, a duplicate's or unusable, is marked deleted. A read failure (``unreadable``)
    says nothing about the content and retires nothing. Each table is checked first and written only where
    a row is retired; returns how many rows per table."""
    passed = classified.filter(F.col("bucket") != "duplicates").select("path")
    duplicate = classified.filter(F.col("bucket") == "duplicates").select("path")
    unusable = _unusable(quarantine)
    retire = (
        # table, the paths whose rows go, which of their rows (on the table as ``t``), how (None: delete)
        (QUARANTINE_TABLE, passed.union(duplicate), f"t.stage = '{INGEST_STAGE}'", None),
        (DUPLICATES_TABLE, passed.union(unusable), "true", None),
        (IMAGES_TABLE, duplicate.union(unusable), "t.deleted_at IS NULL", {"deleted_at": "current_timestamp()"}),
    )
    retired = {}
    for name, paths, which, update_set in retire:
        table = config.table(name)
        stale = (tables.table_frame(spark, table).alias("t").filter(F.expr(which)).select("path")
                 .join(paths.distinct(), "path").persist())
        try:
            n = stale.count()
            if n:
                tables.merge(spark, table, stale, f"t.path = s.path AND {which}",
                             delete_when="true" if update_set is None else None, update_set=update_set)
                retired[name] = n
        finally:
            stale.unpersist()
    if retired:
        log.info("rows superseded by the files' verdicts in this batch: %s", retired)
    return retired


@contextlib.contextmanager
def _clustered(spark, config: PipelineConfig, accepted: DataFrame, live: DataFrame,
               counts: IngestCounts) -> Iterator[tuple[DataFrame, bool]]:
    """The accepted rows with their near-duplicate clusters joined (near_dup_cluster, cluster_label,
    label_example) and the split of their cluster, and whether any has a cluster; valid inside the block."""
    nd = config.ingest.near_duplicates
    unclustered = accepted.withColumn("near_dup_cluster", F.lit(None).cast("string"))
    if not (nd.enabled and counts.ingested + counts.updated):
        yield unclustered, False
        return
    with near_duplicates.clusters(spark, nd, accepted, live) as (clusters, report):
        counts.near_duplicates = report
        if clusters is None:
            yield unclustered, False
        else:
            yield (accepted.join(clusters, "sha256", "left")
                   .withColumn("split", F.coalesce(F.col("cluster_split"), F.col("split")))), True


def _write_rows(spark, config: PipelineConfig, files: DataFrame, accepted: DataFrame, counts: IngestCounts,
                run_id: str, committed: Counter, read_version: int) -> None:
    """The accepted rows (clusters joined), with their bytes unless ``content`` is ``reference``."""
    if config.ingest.content == "reference":  # path, sha256 and header fields only: no second read
        images = accepted.withColumn("content", F.lit(None).cast("binary"))
    else:
        # The bytes are read again here rather than carried through the probe: a second sequential read is
        # far cheaper than spilling every image to disk. Their CRC32 against that of the bytes the probe
        # hashed catches a file that changed in between (CRC32 runs at memory speed in the JVM, where its
        # SHA-256 without C2 is an order of magnitude slower); the written row count is checked against
        # what was accepted.
        if "content" in files.columns:  # Spark's reader (object stores)
            small = counts.ingested + counts.updated <= tables.BROADCAST_ROWS
            images = files.select("path", "content").join(F.broadcast(accepted) if small else accepted, "path")
        else:  # listed local files: read again by the Python workers, as the probe read them, and only those kept
            # (the rows pass through with their bytes: joining the bytes back to a broadcast of the very rows
            # they were read for failed on Spark 4.2 beyond a few thousand images, "unread block data")
            images = accepted.mapInArrow(functools.partial(with_local_contents, max_bytes=config.ingest.max_bytes),
                                         StructType([*accepted.schema.fields, StructField("content", BinaryType())]))
        images = images.filter(F.crc32("content") == F.col("crc32"))
    images = images.select(
        "path", "label", "content", "sha256", "size_bytes", "format", "width", "height", "split", "group_key",
        "phash", "near_dup_cluster", F.current_timestamp().alias("ingested_at"),
        F.lit(None).cast("timestamp").alias("deleted_at"), F.lit(run_id).alias("run_id"),
        "phash_fine", "brightness", "contrast", "sharpness", "bucket",
    )
    # Keyed on path: a changed file replaces its row (the old content stays reachable by time travel); a
    # file that comes back after being marked deleted is live again. New paths go through Delta's
    # insert-only MERGE (one pass over the source, no rewrite of existing files; unlike a blind append it
    # conflicts with a concurrent ingest, whose retry then finds that run's content as duplicates); the
    # rare changed or restored paths through the full MERGE.
    images_table = config.table(IMAGES_TABLE)
    # The rows were sorted against ``read_version``; a MERGE only conflicts with commits after the version it
    # reads itself, so a concurrent ingest's content committed in between would go in a second time.
    if tables.latest_version(spark, images_table) != read_version:
        raise tables.ConcurrentCommitSinceRead(f"{images_table} changed since version {read_version}")
    # What each write commits is counted at once: a conflict in a later write retries the batch (see write_batch).
    if counts.ingested - committed["ingested"]:
        committed["ingested"] += tables.upsert(spark, images_table, IMAGES_SCHEMA,
                                               images.filter(F.col("bucket") == "ingested"), ["path"])
    if counts.updated - committed["updated"]:
        committed["updated"] += tables.upsert(spark, images_table, IMAGES_SCHEMA, images.filter(F.col("bucket") == "updated"),
                                              ["path"], update_when="t.sha256 <> s.sha256 OR t.deleted_at IS NOT NULL")
    if committed["ingested"] + committed["updated"] != counts.ingested + counts.updated:
        raise RuntimeError(f"wrote {sum(committed.values())} image rows but accepted {counts.ingested + counts.updated}: "
                           "files changed while ingest was reading them; run it again")


def mark_deleted(spark: SparkSession, config: PipelineConfig, base: str, listed_paths: list, run_id: str) -> int:
    """Set deleted_at on live rows under ``base`` whose file is no longer listed; returns how many."""
    images_table = config.table(IMAGES_TABLE)
    if not tables.is_delta_table(spark, images_table):
        return 0
    listed = spark.createDataFrame([(p,) for p in listed_paths], "path string")
    gone = (
        tables.table_frame(spark, images_table)
        .filter(F.col("deleted_at").isNull() & F.col("path").startswith(base + "/"))
        .join(listed, "path", "left_anti").select("path").persist()
    )
    try:
        n = gone.count()
        if n:
            with tables.commit_metadata(spark, {"job": "ingest", "run_id": run_id, "marked_deleted": n}):
                tables.retry_on_conflict("mark_deleted", lambda: tables.merge(
                    spark, images_table, gone, "t.path = s.path", update_set={"deleted_at": "current_timestamp()"}))
    finally:
        gone.unpersist()
    return n
