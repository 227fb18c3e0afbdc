"""Preprocess: Delta ``images`` -> Delta ``processed`` through an iterator pandas UDF
(decode -> EXIF orientation -> RGB -> resize/crop -> encode). Failures go to ``quarantine`` (stage
``preprocess``). Incremental: rows already processed with the same preprocess settings are skipped."""
from __future__ import annotations

import logging
from collections import Counter
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
    QUARANTINE_CHANGED,
    QUARANTINE_KEYS,
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
        StructField("device", StringType(), True),
        StructField("task_gpu", StringType(), True),
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
    backends: Optional[dict] = None  # "backend on device" -> rows
    task_gpus: Optional[dict] = None  # GPU address Spark gave the task -> rows
    gpu_fallback: str = ""  # set when backend auto ran on CPU although tasks were given GPUs


@dataclass(frozen=True)
class Placement:
    """Where a task's images are processed: the backend that runs, its DALI device id (None: CPU), the
    GPU address Spark gave the task (None: none), and why a requested GPU was not used."""

    backend: str
    device_id: Optional[int]
    task_gpu: Optional[str]
    note: str = ""

    @property
    def device(self) -> str:
        return "cpu" if self.device_id is None else f"gpu:{self.device_id}"


def task_gpu_address() -> Optional[str]:
    """The first GPU address Spark assigned to the running task, if any."""
    from pyspark import TaskContext

    context = TaskContext.get()
    resources = context.resources() if context is not None else {}
    gpu = resources.get("gpu")
    return gpu.addresses[0] if gpu is not None and gpu.addresses else None


def place(requested: str, task_gpu: Optional[str], cuda_usable) -> Placement:
    """Resolve the configured backend for a task. The GPU is the one Spark assigned (never a fixed 0)."""
    if requested in ("pil", "dali-cpu"):
        return Placement(requested, None, task_gpu)
    if requested == "dali-gpu":
        if task_gpu is None:
            raise RuntimeError("preprocess.backend=dali-gpu but Spark gave this task no GPU: use the gpu profile "
                               "(spark.task.resource.gpu.amount) or backend auto")
        return Placement("dali-gpu", int(task_gpu), task_gpu)
    if task_gpu is not None and cuda_usable(int(task_gpu)):
        return Placement("dali-gpu", int(task_gpu), task_gpu)
    why = "the task has no GPU" if task_gpu is None else f"GPU {task_gpu} was assigned but CUDA cannot use it"
    return Placement("dali-cpu", None, task_gpu, note=f"auto: {why}, falling back to dali-cpu")


def process_series(contents: pd.Series, settings: PreprocessConfig, max_pixels: int,
                   placement: Placement = Placement("pil", None, None)) -> pd.DataFrame:
    """One Arrow batch of raw image bytes -> the _RESULT_TYPE columns. With a DALI placement, plain RGB/L
    JPEGs and PNGs go through DALI in one batch; the rest (other modes, transparency, EXIF orientation)
    through Pillow, and each row records the backend that made it."""
    rows: list = [None] * len(contents)
    dali_rows, dali_sizes = [], []
    for i, data in enumerate(contents):
        try:
            plain_size = imaging.plain_rgb_jpeg_or_png(data, max_pixels) if placement.backend != "pil" else None
            if plain_size:
                dali_rows.append(i)
                dali_sizes.append(plain_size)
                continue
            image, width, height = imaging.process(
                data, size=settings.size, output_format=settings.output_format, quality=settings.quality,
                max_pixels=max_pixels, draft=settings.draft,
            )
            rows[i] = (image, width, height, "pil", "cpu", placement.task_gpu, None, None)
        except imaging.ImageError as e:
            rows[i] = (None, None, None, "pil", "cpu", placement.task_gpu, e.reason, e.detail)
    if dali_rows:
        from imgshards import dali_backend

        try:
            arrays = dali_backend.resize_crop([contents.iloc[i] for i in dali_rows], dali_sizes, settings.size,
                                              placement.device_id)
        except RuntimeError:
            # One bad image fails a whole DALI batch: redo them one by one so only the bad one is quarantined.
            arrays = []
            for i, plain_size in zip(dali_rows, dali_sizes):
                try:
                    arrays.extend(dali_backend.resize_crop([contents.iloc[i]], [plain_size], settings.size,
                                                           placement.device_id))
                except RuntimeError as e:
                    arrays.append(imaging.ImageError("corrupt", f"DALI: {str(e).splitlines()[0]}"))
        for i, array in zip(dali_rows, arrays):
            if isinstance(array, imaging.ImageError):
                rows[i] = (None, None, None, placement.backend, placement.device, placement.task_gpu,
                           array.reason, array.detail)
            else:
                image = imaging.encode(array, settings.output_format, settings.quality)
                rows[i] = (image, settings.size, settings.size, placement.backend, placement.device,
                           placement.task_gpu, None, None)
    return pd.DataFrame(rows, columns=_RESULT_TYPE.fieldNames())


def process_column(content: Column, settings: PreprocessConfig, max_pixels: int) -> Column:
    """The preprocess transform as a Column: struct of _RESULT_TYPE. The placement is resolved once per
    task, inside the task (DALI and CUDA must not be touched on the driver or before the fork)."""

    @F.pandas_udf(_RESULT_TYPE)
    def preprocess_udf(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        placement = None
        for contents in batches:
            if placement is None:
                from imgshards.dali_backend import cuda_usable

                placement = place(settings.backend, task_gpu_address(), cuda_usable)
                if placement.note:
                    log.warning(placement.note)
            yield process_series(contents, settings, max_pixels, placement)

    return preprocess_udf(content)


def run_preprocess(
    spark: SparkSession, config: PipelineConfig, run_id: str, as_of_version: Optional[int] = None
) -> PreprocessCounts:
    images, version = tables.read_table(spark, config.table_path(IMAGES_TABLE), as_of_version)
    images = images.filter(F.col("deleted_at").isNull())
    fingerprint = config.output_fingerprint()
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
        now = F.current_timestamp()
        ok = results.filter(F.col("reason").isNull())
        failed = results.filter(F.col("reason").isNotNull())
        # One aggregation gives every count: the results are read back from disk once, not once a count.
        outcomes = results.groupBy("reason", "backend", "device", "task_gpu").count().collect()
        backends, task_gpus, reasons = Counter(), Counter(), Counter()
        for r in outcomes:
            if r["reason"] is None:
                backends[f"{r['backend']} on {r['device']}"] += r["count"]
                if r["task_gpu"] is not None:
                    task_gpus[r["task_gpu"]] += r["count"]
            else:
                reasons[r["reason"]] += r["count"]
        counts.processed = sum(backends.values())
        counts.backends, counts.task_gpus = dict(backends), dict(task_gpus)
        counts.quarantine_reasons = dict(sorted(reasons.items()))
        counts.quarantined = sum(reasons.values())
        counts.already_processed = images.count() - counts.processed - counts.quarantined
        if config.preprocess.backend == "auto" and counts.task_gpus and not any("gpu:" in k for k in counts.backends):
            counts.gpu_fallback = ("auto: tasks were given GPUs " + ",".join(sorted(counts.task_gpus))
                                   + " but CUDA could not use them; ran dali-cpu")
            log.warning(counts.gpu_fallback)
        metadata = {"job": "preprocess", "run_id": run_id, "config_fingerprint": fingerprint,
                    "source_version": version, "counts": {"processed": counts.processed, "quarantined": counts.quarantined}}
        with tables.commit_metadata(spark, metadata):
            if counts.processed:
                tables.upsert(
                    spark, processed_path, PROCESSED_SCHEMA,
                    ok.select(
                        "sha256", "path", "label", "split", "image",
                        F.lit(config.preprocess.output_format).alias("image_format"), "width", "height",
                        F.lit(fingerprint).alias("config_fingerprint"), F.lit(version).cast("long").alias("source_version"),
                        "backend", "device", "task_gpu", now.alias("processed_at"), F.lit(run_id).alias("run_id"),
                    ),
                    ["sha256", "config_fingerprint"],
                )
            if counts.quarantined:
                tables.upsert(
                    spark, config.table_path(QUARANTINE_TABLE), QUARANTINE_SCHEMA,
                    failed.select(
                        "path", F.lit(PREPROCESS_STAGE).alias("stage"), "reason", "detail", "size_bytes", "sha256",
                        now.alias("quarantined_at"), F.lit(run_id).alias("run_id"),
                    ),
                    QUARANTINE_KEYS, update_when=QUARANTINE_CHANGED,
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
