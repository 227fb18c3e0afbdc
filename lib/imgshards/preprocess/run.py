"""Preprocess: Delta ``images`` -> Delta ``processed`` through an iterator pandas UDF running
imgshards.preprocess.transform (decode -> EXIF orientation -> RGB -> resize -> encode; augmented copies through
DALI). Failures go to ``quarantine`` (stage ``preprocess``). Incremental: samples already processed with
the same settings are skipped."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType
from pyspark.sql.window import Window

from imgshards import __version__
from imgshards.config import PipelineConfig, PreprocessConfig
from imgshards.delta import run_state, tables
from imgshards.imaging import dali
from imgshards.io import storage
from imgshards.observe import progress
from imgshards.preprocess.samples import as_original, augmented_copies
from imgshards.preprocess.transform import RESULT_COLUMNS, fetch_sources, place, process_series
from imgshards.runtime import workers
from imgshards.schemas import (
    IMAGES_TABLE,
    PROCESSED_SCHEMA,
    PROCESSED_TABLE,
    QUARANTINE_CHANGED,
    QUARANTINE_KEYS,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
    SAMPLE_KEY,
)

log = logging.getLogger(__name__)

PREPROCESS_STAGE = "preprocess"
BATCH_BYTES = 64 * 1024 * 1024  # encoded bytes of one Arrow batch, at most
BATCH_PIXELS = 128_000_000  # decoded pixels of one batch, at most (x3 bytes in RGB)
ARROW_BATCH_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"  # Spark 4: a batch ends past this many bytes

_RESULT_TYPES = {"image": BinaryType(), "width": IntegerType(), "height": IntegerType()}
_RESULT_TYPE = StructType([StructField(name, _RESULT_TYPES.get(name, StringType()), True) for name in RESULT_COLUMNS])


@dataclass
class PreprocessCounts:
    source_version: int = 0
    config_fingerprint: str = ""
    already_processed: int = 0
    processed: int = 0
    augmented: int = 0  # of processed: augmented copies
    quarantined: int = 0
    quarantine_reasons: Optional[dict] = None
    backends: Optional[dict] = None  # "backend on device" -> rows
    task_gpus: Optional[dict] = None  # GPU address Spark gave the task -> rows
    gpu_fallback: str = ""  # set when backend auto ran on CPU although tasks were given GPUs
    read_bytes: int = 0  # encoded source bytes of the samples made this run
    written_bytes: int = 0  # encoded output images appended to processed


def task_gpu_address() -> Optional[str]:
    """The first GPU address Spark assigned to the running task, if any."""
    from pyspark import TaskContext

    context = TaskContext.get()
    resources = context.resources() if context is not None else {}
    gpu = resources.get("gpu")
    return gpu.addresses[0] if gpu is not None and gpu.addresses else None


def process_column(content: Column, seed: Column, settings: PreprocessConfig, max_pixels: int,
                   source: Optional[tuple] = None, s3: tuple = (None, None, None)) -> Column:
    """The preprocess transform as a Column: struct of _RESULT_TYPE. ``source``: the (path, size_bytes,
    sha256) columns, for rows ingested by reference (content null: the worker reads the file by path, see
    transform.fetch_sources). The placement is resolved once per task, inside the task (DALI and CUDA must
    not be touched on the driver or before the fork). Images done are added to the progress accumulator,
    when there is one."""
    done = progress.images_counter()
    path, size, sha256 = source or (F.lit(None).cast("string"), F.lit(None).cast("long"), F.lit(None).cast("string"))

    @F.pandas_udf(_RESULT_TYPE)
    def preprocess_udf(batches: Iterator[Tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        placement = None
        for contents, seeds, paths, sizes, shas in batches:
            if placement is None:
                placement = place(settings.backend, task_gpu_address(), dali.cuda_usable)
                if placement.note:
                    log.warning(placement.note)
            contents = fetch_sources(contents, paths, sizes, shas, s3)
            yield process_series(contents, seeds, settings, max_pixels, placement)
            if done is not None:
                done.add(len(contents))

    return preprocess_udf(content, seed, path, size, sha256)


def run_preprocess(
    spark: SparkSession, config: PipelineConfig, run_id: str, as_of_version: Optional[int] = None
) -> PreprocessCounts:
    remembered = as_of_version is None and run_state.usable(config)
    if remembered:
        before = run_state.table_versions(spark, config, (IMAGES_TABLE, PROCESSED_TABLE))
        done = _known_complete(spark, config, before)
        if done is not None:
            log.info("preprocess: nothing to make, %d samples already processed (images v%d, processed v%d "
                     "as the last run left them)", done.already_processed, *before.values())
            return done
    workers.start_once(spark)
    counts = _preprocess_version(spark, config, run_id, as_of_version)
    if remembered and not counts.quarantined:  # quarantined rows are tried again next time
        after = run_state.kept_after(spark, config, {PROCESSED_TABLE: before[PROCESSED_TABLE]}, run_id)
        if after is not None:
            run_state.save(spark, config, "preprocess", {
                "settings": _state_settings(config), "images": counts.source_version,
                "processed": after[PROCESSED_TABLE], "samples": counts.processed + counts.already_processed,
                "run_id": run_id})
    return counts


def _state_settings(config: PipelineConfig) -> list:
    return [__version__, *config.sample_fingerprints()]


def _known_complete(spark: SparkSession, config: PipelineConfig, versions: dict) -> Optional[PreprocessCounts]:
    """The counts of a run with nothing to make, when the last run left every wanted sample in ``processed``
    and neither table has a commit since (``versions``): asking Delta would find the same."""
    state = run_state.load(spark, config, "preprocess")
    if (not state or state.get("settings") != _state_settings(config)
            or versions != {IMAGES_TABLE: state.get("images"), PROCESSED_TABLE: state.get("processed")}):
        return None
    return PreprocessCounts(source_version=state["images"], config_fingerprint=config.output_fingerprint(),
                            already_processed=state["samples"])


def _preprocess_version(spark: SparkSession, config: PipelineConfig, run_id: str,
                        as_of_version: Optional[int]) -> PreprocessCounts:
    images, version = tables.read_table(spark, config.table(IMAGES_TABLE), as_of_version)
    images = images.filter(F.col("deleted_at").isNull())
    live, *largest = images.agg(F.count(F.lit(1)), F.max("size_bytes"),
                                F.max(F.col("width").cast("long") * F.col("height"))).head()
    # Spark 4 cuts Arrow batches by bytes as well as rows: the byte bound goes to Spark, which then packs many
    # small images and few large ones into a batch, and the rows bound only the decoded pixels.
    by_bytes = int(spark.version.split(".")[0]) >= 4
    records = str(batch_records(None if by_bytes else largest[0], largest[1]))
    with tables.spread_scans(spark), \
            tables.temporary_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", records), \
            tables.temporary_conf(spark, ARROW_BATCH_BYTES, str(BATCH_BYTES) if by_bytes else None), \
            tables.temporary_conf(spark, "spark.sql.parquet.columnarReaderBatchSize", records), \
            progress.stage("preprocess", images=live):
        return _run_preprocess(spark, config, run_id, images, version, live)


def batch_records(largest_bytes: Optional[int], largest_pixels: Optional[int]) -> int:
    """Rows per Arrow batch (and per DALI batch) so that a batch of the largest images stays within
    BATCH_BYTES encoded and BATCH_PIXELS decoded. ``largest_bytes`` None: Spark bounds the bytes itself
    (:data:`ARROW_BATCH_BYTES`, Spark 4); Spark 3.5 bounds Arrow batches by rows only."""
    by_bytes = BATCH_BYTES // max(largest_bytes or 1, 1)
    by_pixels = BATCH_PIXELS // max(largest_pixels or 1, 1)
    return int(max(1, min(dali.MAX_BATCH, by_bytes, by_pixels)))


def _run_preprocess(spark: SparkSession, config: PipelineConfig, run_id: str, images: DataFrame,
                    version: int, live: int) -> PreprocessCounts:
    """run_preprocess on the ``live`` rows of ``images`` (Delta version ``version``)."""
    fingerprint = config.output_fingerprint()
    counts = PreprocessCounts(source_version=version, config_fingerprint=fingerprint)
    processed_table = config.table(PROCESSED_TABLE)
    tables.ensure_table(spark, processed_table, PROCESSED_SCHEMA)
    processed_version = tables.latest_version(spark, processed_table)
    done = tables.at_version(spark, processed_table, processed_version).select(*SAMPLE_KEY)
    # Originals come straight from the images; only the copies need a join to fetch their parent's bytes.
    todo = as_original(images, config).join(done, list(SAMPLE_KEY), "left_anti")
    copies = augmented_copies(images, config)
    if copies is not None:
        todo = todo.unionByName(copies.join(done, list(SAMPLE_KEY), "left_anti").join(images, "sha256"))
    wanted = live + (copies.count() if copies is not None else 0)
    if todo.select(*SAMPLE_KEY).isEmpty():  # keys only: a run with nothing to make reads no image bytes
        counts.already_processed = wanted
        log.info("preprocess: nothing to make, %d samples already processed", wanted)
        return counts
    results = (
        todo.select(*SAMPLE_KEY, "augment_seed", "path", "label", "split", "size_bytes",
                    process_column(F.col("content"), F.col("augment_seed"), config.preprocess,
                                   config.ingest.max_pixels, (F.col("path"), F.col("size_bytes"), F.col("sha256")),
                                   storage.s3_settings(spark)).alias("r"))
        .select("*", "r.*").drop("r")
        .persist(StorageLevel.DISK_ONLY)
    )
    try:
        now = F.current_timestamp()
        ok = results.filter(F.col("reason").isNull())
        failed = results.filter(F.col("reason").isNotNull())
        # One aggregation gives every count: the results are read back from disk once, not once a count.
        outcomes = results.groupBy("reason", "backend", "device", "task_gpu", (F.col("copy") > 0).alias("augmented")).agg(
            F.count(F.lit(1)).alias("count"), F.sum("size_bytes").alias("read"), F.sum(F.length("image")).alias("written"),
        ).collect()
        backends, task_gpus, reasons = Counter(), Counter(), Counter()
        for r in outcomes:
            counts.read_bytes += r["read"] or 0
            if r["reason"] is None:
                counts.written_bytes += r["written"] or 0
                backends[f"{r['backend']} on {r['device']}"] += r["count"]
                if r["task_gpu"] is not None:
                    task_gpus[r["task_gpu"]] += r["count"]
                counts.augmented += r["count"] if r["augmented"] else 0
            else:
                reasons[r["reason"]] += r["count"]
        counts.processed = sum(backends.values())
        counts.backends, counts.task_gpus = dict(backends), dict(task_gpus)
        counts.quarantine_reasons = dict(sorted(reasons.items()))
        counts.quarantined = sum(reasons.values())
        counts.already_processed = wanted - counts.processed - counts.quarantined
        if config.preprocess.backend == "auto" and counts.task_gpus and not any("gpu:" in k for k in counts.backends):
            counts.gpu_fallback = ("auto: tasks were given GPUs " + ",".join(sorted(counts.task_gpus))
                                   + " but CUDA could not use them; ran dali-cpu")
            log.warning(counts.gpu_fallback)
        metadata = {"job": "preprocess", "run_id": run_id, "config_fingerprint": fingerprint,
                    "augment_fingerprint": config.augment_fingerprint() if config.preprocess.augment.enabled else None,
                    "source_version": version, "counts": {"processed": counts.processed, "augmented": counts.augmented,
                                                          "quarantined": counts.quarantined}}
        with tables.commit_metadata(spark, metadata):
            if counts.processed:
                tables.append(
                    spark, processed_table, PROCESSED_SCHEMA,
                    ok.select(
                        "sha256", "copy", "augment_seed", "path", "label", "split", "image",
                        F.lit(config.preprocess.output_format).alias("image_format"), "width", "height",
                        "config_fingerprint", F.lit(version).cast("long").alias("source_version"),
                        "backend", "device", "task_gpu", now.alias("processed_at"), F.lit(run_id).alias("run_id"),
                    ),
                    processed_version, SAMPLE_KEY, run_id,
                )
            if counts.quarantined:
                # One row per path: when copies of an image fail too, the lowest copy's verdict stands.
                rank = F.row_number().over(Window.partitionBy("path").orderBy("copy"))
                tables.retry_on_conflict("preprocess quarantine", lambda: tables.upsert(
                    spark, config.table(QUARANTINE_TABLE), QUARANTINE_SCHEMA,
                    failed.withColumn("rank", rank).filter("rank = 1").select(
                        "path", F.lit(PREPROCESS_STAGE).alias("stage"), "reason", "detail", "size_bytes", "sha256",
                        now.alias("quarantined_at"), F.lit(run_id).alias("run_id"),
                    ),
                    QUARANTINE_KEYS, update_when=QUARANTINE_CHANGED,
                ))
    finally:
        results.unpersist()
    log.info("preprocess: %s", counts)
    return counts
