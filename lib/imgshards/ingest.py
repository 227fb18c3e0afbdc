"""Ingest: image files under an input path -> Delta tables ``images``, ``quarantine`` and ``duplicates``.

Every file seen ends up in exactly one bucket of :class:`IngestCounts`; the run fails if they do not add
up. Only headers are read for format and size; the optional perceptual hash decodes JPEGs at 1/8 scale.
Batch (:func:`run_ingest`) and streaming (:func:`run_ingest_stream`) apply the same per-batch logic
(:func:`ingest_batch`): one pass over the bytes, one aggregation for the buckets, then MERGEs keyed on path
of only what changes, so re-runs and replays add nothing twice. The per-file rules are in
:mod:`imgshards.rules`, near-duplicate clustering in :mod:`imgshards.near_duplicates`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import posixpath
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence
from urllib.parse import urlparse

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, LongType, StringType, StructField, StructType, TimestampType

from imgshards import imaging, ingest_state, near_duplicates, progress, storage, tables, workers
from imgshards.background import Background
from imgshards.config import LabelsConfig, PipelineConfig, join_path
from imgshards.filesystems import open_source
from imgshards.rules import (
    EXAMPLES,
    extension_glob,
    group_from_path,
    has_extension,
    is_hidden,
    label_from_path,
    split_column,
    split_key_column,
)
from imgshards.schemas import (
    DUPLICATES_SCHEMA,
    DUPLICATES_TABLE,
    IMAGES_SCHEMA,
    IMAGES_TABLE,
    QUARANTINE_CHANGED,
    QUARANTINE_KEYS,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
)

log = logging.getLogger(__name__)

INGEST_STAGE = "ingest"

# Spark's binaryFile schema; a streaming source must be given it.
BINARY_FILE_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("modificationTime", TimestampType(), False),
        StructField("length", LongType(), False),
        StructField("content", BinaryType(), True),
    ]
)

_PROBED_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("relative", StringType(), False),
        StructField("label", StringType(), True),
        StructField("group_key", StringType(), True),
        StructField("sha256", StringType(), True),
        StructField("size_bytes", LongType(), False),
        StructField("format", StringType(), True),
        StructField("width", IntegerType(), True),
        StructField("height", IntegerType(), True),
        StructField("phash", LongType(), True),
        # CRC32 of the bytes the probe hashed, when the bytes are kept (ingest.content=copy): the check
        # that the bytes read again to write are the same (see _write_rows). Not a table column.
        StructField("crc32", LongType(), True),
        StructField("reason", StringType(), True),
        StructField("detail", StringType(), True),
    ]
)
_PROBED_INTEGERS = [f.name for f in _PROBED_SCHEMA.fields if isinstance(f.dataType, (IntegerType, LongType))]


@dataclass
class IngestCounts:
    """What happened to every file seen (``seen`` equals the sum of the buckets), plus reports."""

    seen: int = 0
    ingested: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    quarantined: int = 0
    skipped_hidden: int = 0
    skipped_non_image: int = 0
    quarantine_reasons: dict = field(default_factory=dict)
    marked_deleted: int = 0
    batches: int = 0
    read_bytes: int = 0  # bytes of the image files read (files over max_bytes are never read)
    labels_report: dict = field(default_factory=dict)
    near_duplicates: dict = field(default_factory=dict)

    _BUCKETS = ("ingested", "updated", "unchanged", "duplicates", "quarantined", "skipped_hidden", "skipped_non_image")

    def accounted(self) -> int:
        return sum(getattr(self, name) for name in self._BUCKETS)

    def check(self) -> None:
        if self.accounted() != self.seen:
            raise RuntimeError(f"ingest accounting does not add up: seen {self.seen} != accounted {self.accounted()} ({self})")
        if sum(self.quarantine_reasons.values()) != self.quarantined:
            raise RuntimeError(f"quarantine reasons {self.quarantine_reasons} do not add up to {self.quarantined}")

    def add(self, other: "IngestCounts") -> None:
        """Fold one micro-batch's counts into these totals (streaming)."""
        for name in ("seen", "marked_deleted", "batches", "read_bytes") + self._BUCKETS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.quarantine_reasons = dict(sorted((Counter(self.quarantine_reasons) + Counter(other.quarantine_reasons)).items()))
        for report, new in ((self.labels_report, other.labels_report), (self.near_duplicates, other.near_duplicates)):
            for key, value in new.items():
                if isinstance(value, list):
                    report[key] = (report.get(key, []) + value)[:EXAMPLES]
                else:
                    report[key] = report.get(key, 0) + value


def _read_local(path: str, max_bytes: int) -> bytes:
    """The bytes of a local file read in this Python worker; raises :class:`imaging.ImageError`."""
    try:
        with open_source(path) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:  # gone since the listing, denied
        raise imaging.ImageError("unreadable", f"could not be read: {e}"[:500]) from e
    if len(data) > max_bytes:
        raise imaging.ImageError("too_large_bytes", f"more than ingest.max_bytes {max_bytes} bytes when read")
    return data


def _probe_batches(
    batches: Iterator[pd.DataFrame], *, base: str, max_pixels: int, labels: LabelsConfig,
    group_regex: Optional[str], phash: bool, done=None, max_bytes: int = 2**31 - 1, crc32: bool = False,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: sha256, header probe (+ perceptual hash, + ``crc32`` of the bytes) per file; errors
    become reason/detail. Batches of (path, length) are local files this worker reads itself; batches with
    content come from the JVM's reader (object stores). Returns metadata only: the bytes are read again when
    the table is written."""
    for batch in batches:
        rows = []
        local = "content" not in batch
        unread = [None] * len(batch)
        for path, length, content in zip(batch["path"], batch["length"], unread if local else batch["content"]):
            relative = path[len(base) + 1 :] if path.startswith(base + "/") else posixpath.basename(path)
            row = dict.fromkeys(_PROBED_SCHEMA.fieldNames())
            row.update(path=path, relative=relative, size_bytes=int(length),
                       label=label_from_path(relative, labels), group_key=group_from_path(relative, group_regex))
            try:
                if local:
                    content = _read_local(path, max_bytes)
                elif content is None:
                    raise imaging.ImageError("unreadable", "no content returned by the reader")
                # Here, not by Spark's sha2: the JVM's SHA-256 runs at 90 MB/s without the C2 compiler (the
                # local profile's JIT), Python's at 1.4 GB/s.
                row["sha256"] = hashlib.sha256(content).hexdigest()
                if crc32:
                    row["crc32"] = zlib.crc32(content)
                info = imaging.probe(content, max_pixels)
                row.update(format=info.format, width=info.width, height=info.height)
                if phash:
                    row["phash"] = imaging.perceptual_hash(content, max_pixels)
            except imaging.ImageError as e:
                row.update(reason=e.reason, detail=e.detail)
            rows.append(row)
        # Integer columns as nullable integers from the start: a batch with one failed probe would otherwise
        # make them float64, which rounds 64-bit perceptual hashes (so near-duplicates depended on how files
        # fell into batches).
        yield pd.DataFrame({
            name: pd.array([row[name] for row in rows], dtype="Int64") if name in _PROBED_INTEGERS
            else [row[name] for row in rows]
            for name in _PROBED_SCHEMA.fieldNames()
        })
        if done is not None:  # the progress accumulator
            done.add(len(rows))


# ---------------------------------------------------------------------------------------------------------
# Reading


def read_files(spark: SparkSession, input_root: str, config: PipelineConfig, *, stream: bool = False) -> DataFrame:
    """binaryFile over the image files under ``input_root``: path, length, content (read lazily)."""
    reader = spark.readStream if stream else spark.read
    reader = (
        reader.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", extension_glob(config.ingest.extensions))
    )
    if stream:
        reader = reader.schema(BINARY_FILE_SCHEMA).option("maxFilesPerTrigger", config.ingest.stream.max_files_per_trigger)
    else:
        # A file deleted between the listing and the read is skipped, not a failed job; the batch run
        # quarantines it from its own listing (ingest_batch's ``listed``).
        reader = reader.option("ignoreMissingFiles", "true")
    return reader.load(input_root).select("path", "length", "content")


# Tasks per core of the pass over files listed on the driver: images differ in cost, and a last task left
# alone would idle the other cores.
LISTED_TASKS_PER_CORE = 4
LISTED_TASK_BYTES = 128 << 20


def listed_files(spark: SparkSession, listed: dict) -> DataFrame:
    """(path, length) of the files the driver listed (path -> size in bytes), in tasks of at most
    LISTED_TASK_BYTES: the input of the pass over local files, which the Python workers read themselves.
    Spark's binaryFile would list the folder a second time (1.6 s for 5,161 files here) for nothing."""
    sc = spark.sparkContext
    tasks = max(LISTED_TASKS_PER_CORE * sc.defaultParallelism, -(-sum(listed.values()) // LISTED_TASK_BYTES))
    paths = sorted(listed)
    frame = pd.DataFrame({"id": range(len(paths)), "path": paths, "length": [listed[p] for p in paths]})
    # Through Arrow into the JVM, then spread over the tasks by a range join: every scan of it stays in the
    # JVM. sc.parallelize would hand each scan's rows to the RDD Python workers (another pool than the
    # pandas UDFs'), about 1 s a scan of 5,000 rows here, and ingest scans it more than once.
    with tables.temporary_conf(spark, "spark.sql.execution.arrow.pyspark.enabled", "true"):
        rows = spark.createDataFrame(frame, "id long, path string, length long")
    if len(paths) <= tables.BROADCAST_ROWS:
        rows = F.broadcast(rows)
    return spark.range(0, len(paths), numPartitions=max(1, min(tasks, len(paths)))).join(rows, "id").drop("id")


def read_labels_file(spark: SparkSession, labels: LabelsConfig) -> DataFrame:
    """The labels file as (label_key, file_label, file_group): CSV/TSV with a header, or JSON lines."""
    path = labels.file
    ingest_state.labels_file_status(spark, labels)  # a missing file fails here, naming the setting
    if path.lower().endswith((".csv", ".tsv")):
        df = spark.read.option("header", "true").option("sep", "\t" if path.lower().endswith(".tsv") else ",").csv(path)
    else:
        df = spark.read.json(path)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"labels file {path} lacks column(s) {sorted(missing)}; it has {df.columns}")
    group = F.col("group").cast("string") if "group" in df.columns else F.lit(None).cast("string")
    return df.select(F.col("path").cast("string").alias("label_key"), F.col("label").cast("string").alias("file_label"),
                     group.alias("file_group")).dropDuplicates(["label_key"])


def _label_key(relative: F.Column, labels: LabelsConfig) -> F.Column:
    return relative if labels.key == "path" else F.element_at(F.split(relative, "/"), -1)


# ---------------------------------------------------------------------------------------------------------
# One batch of files (a whole batch run, or one streaming micro-batch)


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
        _probe_batches, base=base, max_pixels=ingest.max_pixels, labels=ingest.labels,
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
        # Arrow (on 5,161 photos the pass took 7.8 s instead of 8.5). Object stores go through Spark's reader
        # and its credentials.
        probed = readable.select("path", "length").mapInPandas(probe, _PROBED_SCHEMA)
    else:
        probed = readable.mapInPandas(probe, _PROBED_SCHEMA)
    if labels is not None:
        probed = (
            probed.withColumn("label_key", _label_key(F.col("relative"), ingest.labels))
            .join(labels, "label_key", "left")
            .withColumn("label", F.col("file_label"))
            .withColumn("group_key", F.coalesce("file_group", "group_key"))
            .drop("label_key", "file_label", "file_group")
        )
    if ingest.labels.required:
        unlabeled = F.col("reason").isNull() & F.col("label").isNull()
        probed = probed.withColumn("detail", F.when(unlabeled, F.lit(f"no label from ingest.labels.source={ingest.labels.source}"))
                                   .otherwise(F.col("detail")))
        probed = probed.withColumn("reason", F.when(unlabeled, F.lit("unlabeled")).otherwise(F.col("reason")))
    probed = probed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = IngestCounts(batches=1)
        # The one pass over the files' bytes (sha256, probe, dHash) also gives every count it decides.
        read = probed_ok = 0
        reasons: Counter = Counter(reason for _, _, reason, _ in rejected)
        # While the executors probe, the driver opens (or creates) the three tables ingest writes: a JVM's
        # first Delta operation loads Delta's classes and log machinery, about 2 s, and each creation is a
        # commit of its own (0.4-1 s), all of which would otherwise follow the pass.
        opening = Background(INGEST_STAGE, _ensure_tables, spark, config)
        outcomes = _outcomes(probed, oversized).collect()
        opening.wait()  # an error is _write's to raise: it opens the tables again
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
        quarantine = _quarantine_rows(spark, probed, oversized, rejected, run_id)
        # A conflict with a concurrent writer redoes the write from the tables' new version: files another
        # run ingested meanwhile become unchanged rows or duplicates, never a second copy.
        if "content" in files.columns or config.ingest.content == "reference":
            with_bytes = readable
        else:  # listed local files: Spark's reader reads the bytes to keep, by path
            with_bytes = read_files(spark, base, config).filter(F.col("length") <= ingest.max_bytes)
        tables.retry_on_conflict("ingest", lambda: _write(spark, config, with_bytes, probed, probed_ok, quarantine,
                                                          counts, run_id))
    finally:
        probed.unpersist()
    counts.check()
    return counts


_INGEST_TABLES = ((IMAGES_TABLE, IMAGES_SCHEMA), (QUARANTINE_TABLE, QUARANTINE_SCHEMA), (DUPLICATES_TABLE, DUPLICATES_SCHEMA))


def _ensure_tables(spark: SparkSession, config: PipelineConfig) -> None:
    for name, schema in _INGEST_TABLES:
        tables.ensure_table(spark, config.table_path(name), schema)


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


def _quarantine_rows(spark, probed: DataFrame, oversized: DataFrame, rejected, run_id: str) -> DataFrame:
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


def _classified(probed: DataFrame, table: DataFrame) -> DataFrame:
    """The probed files that passed, each with its ``bucket`` (unchanged, duplicates, updated, ingested)
    against the table's rows, and ``duplicate_of`` for the duplicates: the live path that has the content
    already, or the first path (in path order) that has it in this batch."""
    known = table.select("path", F.col("sha256").alias("_known_sha256"), F.col("deleted_at").isNull().alias("_known_live"))
    known_sha = table.filter(F.col("deleted_at").isNull()).groupBy("sha256").agg(F.min("path").alias("_existing_path"))
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


def _write(spark, config: PipelineConfig, files: DataFrame, probed: DataFrame, probed_ok: int, quarantine: DataFrame,
           counts: IngestCounts, run_id: str) -> None:
    """Sort the probed files into buckets against the tables' latest version (one aggregation gives every
    count), then write only what changes: a re-run that finds nothing new commits nothing."""
    ingest = config.ingest
    now = F.current_timestamp()
    images_path = config.table_path(IMAGES_TABLE)
    tables.ensure_table(spark, images_path, IMAGES_SCHEMA)
    # Pinned to the version read: a write into the table makes Spark recompute the cached plans over it, and
    # the classification (which the later writes are joined to) must not change under them.
    table = spark.read.format("delta").option("versionAsOf", tables.latest_version(spark, images_path)).load(images_path)
    classified = (_classified(probed, table)
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
        counts.check()
        accepted = classified.filter(F.col("bucket").isin(*BUCKETS_WRITTEN))
        if ingest.labels.source != "none":
            examples = accepted.filter(F.col("label").isNull()).select("path").limit(EXAMPLES).collect() if unlabeled else []
            counts.labels_report.update(files_without_label=unlabeled + counts.quarantine_reasons.get("unlabeled", 0),
                                        files_without_label_examples=[r[0] for r in examples])

        metadata = {"job": "ingest", "run_id": run_id, "config_fingerprint": config.fingerprint("ingest"),
                    "counts": {k: v for k, v in dataclasses.asdict(counts).items() if isinstance(v, int)}}
        with tables.commit_metadata(spark, metadata):
            if counts.ingested + counts.updated:
                _write_images(spark, config, files, accepted, table, counts, run_id)
            if counts.duplicates:
                tables.upsert(
                    spark, config.table_path(DUPLICATES_TABLE), DUPLICATES_SCHEMA,
                    classified.filter(F.col("bucket") == "duplicates").select(
                        "path", "sha256", "duplicate_of", now.alias("detected_at"), F.lit(run_id).alias("run_id")),
                    ["path"], update_when="t.sha256 <> s.sha256 OR t.duplicate_of <> s.duplicate_of", check_first=True,
                    run_id=run_id,
                )
            if counts.quarantined:
                tables.upsert(spark, config.table_path(QUARANTINE_TABLE), QUARANTINE_SCHEMA, quarantine,
                              QUARANTINE_KEYS, update_when=QUARANTINE_CHANGED, check_first=True, run_id=run_id)
    finally:
        classified.unpersist()


def _write_images(spark, config: PipelineConfig, files: DataFrame, accepted: DataFrame, table: DataFrame,
                  counts: IngestCounts, run_id: str) -> None:
    """The accepted rows, with their near-duplicate clusters and their bytes, into ``images``."""
    nd = config.ingest.near_duplicates
    found = (near_duplicates.clusters(spark, nd, accepted, table.filter(F.col("deleted_at").isNull())) if nd.enabled
             else contextlib.nullcontext((None, {})))
    with found as (clusters, report):
        counts.near_duplicates = report  # {} with hashing off, as the counts start
        if clusters is not None:
            accepted = (accepted.join(clusters, "sha256", "left")
                        .withColumn("split", F.coalesce(F.col("cluster_split"), F.col("split"))))
        else:
            accepted = accepted.withColumn("near_dup_cluster", F.lit(None).cast("string"))
        _write_rows(spark, config, files, accepted, counts, run_id)


def _write_rows(spark, config: PipelineConfig, files: DataFrame, accepted: DataFrame, counts: IngestCounts,
                run_id: str) -> None:
    """The accepted rows (clusters joined), with their bytes unless ``content`` is ``reference``."""
    if config.ingest.content == "reference":  # path, sha256 and header fields only: no second read
        images = accepted.withColumn("content", F.lit(None).cast("binary"))
    else:
        if counts.ingested + counts.updated <= tables.BROADCAST_ROWS:
            accepted = F.broadcast(accepted)
        # The bytes are read again here rather than carried through the probe: a second sequential read is
        # far cheaper than spilling every image to disk. Their CRC32 against that of the bytes the probe
        # hashed catches a file that changed in between (CRC32 runs at memory speed in the JVM, where its
        # SHA-256 without C2 took 90 MB/s: 7 s of CPU per 616 MB); the written row count is checked against
        # what was accepted.
        content = files.select("path", "content", F.crc32("content").alias("_crc32"))
        images = content.join(accepted, "path").filter(F.col("_crc32") == F.col("crc32"))
    images = images.select(
        "path", "label", "content", "sha256", "size_bytes", "format", "width", "height", "split", "group_key",
        "phash", "near_dup_cluster", F.current_timestamp().alias("ingested_at"),
        F.lit(None).cast("timestamp").alias("deleted_at"), F.lit(run_id).alias("run_id"), "bucket",
    )
    # Keyed on path: a changed file replaces its row (the old content stays reachable by time travel); a
    # file that comes back after being marked deleted is live again. New paths go through Delta's
    # insert-only MERGE (one pass over the source, no rewrite of existing files; unlike a blind append it
    # conflicts with a concurrent ingest, whose retry then finds that run's content as duplicates); the
    # rare changed or restored paths through the full MERGE.
    images_path = config.table_path(IMAGES_TABLE)
    written = 0
    if counts.ingested:
        written += tables.upsert(spark, images_path, IMAGES_SCHEMA, images.filter(F.col("bucket") == "ingested"), ["path"])
    if counts.updated:
        written += tables.upsert(spark, images_path, IMAGES_SCHEMA, images.filter(F.col("bucket") == "updated"), ["path"],
                                 update_when="t.sha256 <> s.sha256 OR t.deleted_at IS NOT NULL")
    if written != counts.ingested + counts.updated:
        raise RuntimeError(f"wrote {written} image rows but accepted {counts.ingested + counts.updated}: "
                           "files changed while ingest was reading them; run it again")


# ---------------------------------------------------------------------------------------------------------
# Batch and streaming runs


def _labels_report(spark, config: PipelineConfig, labels: DataFrame, relatives: list) -> dict:
    """Labels-file entries that name no file under the input, with examples, and among them those that point
    outside the input root (absolute paths, URLs, ``..``). Files are only ever read from the input's own
    listing, so no entry can make ingest read anything; these are reported so that they can be fixed."""
    listed = spark.createDataFrame([(r,) for r in relatives], "relative string")
    keys = listed.select(_label_key(F.col("relative"), config.ingest.labels).alias("label_key"))
    unmatched = labels.join(keys, "label_key", "left_anti").persist()
    key = F.col("label_key")
    outside = unmatched.filter(key.startswith("/") | key.contains("://") | key.rlike(r"(^|[/\\])\.\.([/\\]|$)"))
    try:
        return {"labels_file": config.ingest.labels.file, "entries": labels.count(),
                "entries_without_file": unmatched.count(),
                "entries_without_file_examples": [r[0] for r in unmatched.select("label_key").limit(EXAMPLES).collect()],
                "entries_outside_input": outside.count(),
                "entries_outside_input_examples": [r[0] for r in outside.select("label_key").limit(EXAMPLES).collect()]}
    finally:
        unmatched.unpersist()


def run_ingest(spark: SparkSession, config: PipelineConfig, input_root: str, run_id: str) -> IngestCounts:
    """Ingest every image under ``input_root`` (batch); returns the counts (already checked to add up)."""
    ingest = config.ingest
    listing = list(storage.list_files(spark, input_root))
    skipped_hidden = skipped_non_image = 0
    rejected, candidates = [], {}
    for f in listing:
        if is_hidden(f.relative):
            skipped_hidden += 1
        elif not has_extension(f.relative, ingest.extensions):
            skipped_non_image += 1
        elif f.size_bytes == 0:
            # Spark's file scan skips empty files, so they are accounted for from the listing.
            rejected.append((f.path, 0, "zero_byte", "0 bytes"))
        else:
            candidates[f.path] = f.size_bytes
    log.info("listed %d files under %s: %d image candidates", len(listing), input_root, len(candidates))
    base = storage.qualify(spark, input_root).rstrip("/")
    digest = before = None
    if ingest_state.in_use(config):
        digest = ingest_state.listing_digest(spark, config, base, listing)
        unchanged = ingest_state.unchanged_counts(spark, config, base, digest)
        if unchanged is not None:
            log.info("nothing changed under %s since the last ingest (listing, settings, tables): no file read", base)
            return unchanged
        before = ingest_state.table_versions(spark, config)
    workers.start_once(spark)  # while the driver reads the labels and opens the tables
    labels = read_labels_file(spark, ingest.labels).persist() if ingest.labels.source == "file" else None
    # Local files: the pass takes the listing as it is (the workers read the files); elsewhere Spark's reader.
    files = listed_files(spark, candidates) if urlparse(base).scheme == "file" else read_files(spark, input_root, config)
    with progress.stage("ingest", images=len(candidates)):
        counts = ingest_batch(spark, config, files, base, run_id, rejected=rejected, labels=labels, listed=candidates)
    if counts.seen - len(rejected) < len(candidates):
        raise RuntimeError(f"listed {len(candidates)} image files under {input_root} but accounted for "
                           f"{counts.seen - len(rejected)}")
    counts.seen += skipped_hidden + skipped_non_image
    counts.skipped_hidden, counts.skipped_non_image = skipped_hidden, skipped_non_image
    counts.check()
    if labels is not None:
        counts.labels_report.update(_labels_report(spark, config, labels, [f.relative for f in listing]))
        labels.unpersist()
    if ingest.missing == "mark_deleted":
        counts.marked_deleted = mark_deleted(spark, config, base, [f.path for f in listing], run_id)
    if digest is not None:
        try:
            ingest_state.record(spark, config, base, digest, before, counts, run_id)
        except Exception as e:  # noqa: BLE001 - the next run then reads every file, as without the state
            log.warning("ingest state of %s not written (%s): the next run reads every file", base, e)
    return counts


def mark_deleted(spark: SparkSession, config: PipelineConfig, base: str, listed_paths: list, run_id: str) -> int:
    """Set deleted_at on live rows under ``base`` whose file is no longer listed; returns how many."""
    images_path = config.table_path(IMAGES_TABLE)
    listed = spark.createDataFrame([(p,) for p in listed_paths], "path string")
    gone = (
        spark.read.format("delta").load(images_path)
        .filter(F.col("deleted_at").isNull() & F.col("path").startswith(base + "/"))
        .join(listed, "path", "left_anti").select("path").persist()
    )
    try:
        n = gone.count()
        if n:
            with tables.commit_metadata(spark, {"job": "ingest", "run_id": run_id, "marked_deleted": n}):
                tables.retry_on_conflict("mark_deleted", lambda: tables.ensure_table(
                    spark, images_path, IMAGES_SCHEMA).alias("t").merge(gone.alias("s"), "t.path = s.path")
                    .whenMatchedUpdate(set={"deleted_at": "current_timestamp()"}).execute())
    finally:
        gone.unpersist()
    return n


def checkpoint_path(config: PipelineConfig) -> str:
    return config.ingest.stream.checkpoint or join_path(config.warehouse, "_checkpoints", "ingest")


def run_ingest_stream(spark: SparkSession, config: PipelineConfig, input_root: str, run_id: str,
                      on_batch: Optional[Callable[[IngestCounts], None]] = None) -> IngestCounts:
    """Structured Streaming over ``input_root`` with a checkpoint: each micro-batch goes through
    :func:`ingest_batch` (the same MERGE), so after a restart every file is in the table exactly once.
    ``on_batch(totals)`` is called after every micro-batch with the running totals (metrics).

    With ``ingest.stream.trigger: available_now`` it drains what is there and returns; with an interval
    it runs until stopped. Zero-byte files are invisible to Spark's streaming file source (see README).
    """
    storage.require_dir(spark, input_root)
    workers.start_once(spark)
    ingest = config.ingest
    base = storage.qualify(spark, input_root).rstrip("/")
    labels = read_labels_file(spark, ingest.labels).persist() if ingest.labels.source == "file" else None
    totals = IngestCounts()

    def each_batch(batch: DataFrame, batch_id: int) -> None:
        counts = ingest_batch(spark, config, batch, base, f"{run_id}-b{batch_id}", labels=labels)
        log.info("stream batch %d: %s", batch_id, counts)
        totals.add(counts)
        if on_batch is not None:
            on_batch(totals)

    writer = (
        read_files(spark, input_root, config, stream=True).writeStream
        .foreachBatch(each_batch)
        .option("checkpointLocation", checkpoint_path(config))
        .queryName(f"imgshards-ingest-{run_id}")
    )
    trigger = ingest.stream.trigger
    writer = writer.trigger(availableNow=True) if trigger == "available_now" else writer.trigger(processingTime=trigger)
    query = writer.start()
    query.awaitTermination()
    totals.check()
    return totals
