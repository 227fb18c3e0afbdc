"""Forgetting images for good (a takedown, a privacy request): :func:`forget`, and the removal behind
``ingest.missing: purge`` (:func:`remove`).

An image is its content: forgetting a path forgets the bytes it holds, under every path that has them
(a duplicate would otherwise take the original's place on the next run). Its rows leave ``images``,
``duplicates``, ``quarantine`` and ``processed``; the table files that still hold them in older versions are
vacuumed with ``forget.retention_hours``; its sha256 goes into the ``forgotten`` table, and later ingests
quarantine a file with that content as ``forgotten`` instead of taking it again. Export folders already
written are files of their own: the forget job names the versions that hold a forgotten image
(:func:`imgshards.export.publish.versions_holding`), and the next export, made from the tables, holds none.

What stays: the sha256 and path in ``forgotten`` (what a takedown must keep to stick), and, until Delta's
log retention (``delta.logRetentionDuration``, 30 days by default) removes old log files, the min/max column
statistics that the log keeps of each removed file (the first 32 characters of a path or hash).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Iterable, Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from imgshards.config import PipelineConfig
from imgshards.delta import tables
from imgshards.schemas import (
    DUPLICATES_TABLE,
    FORGOTTEN_SCHEMA,
    FORGOTTEN_TABLE,
    IMAGES_TABLE,
    LABEL_CONFLICTS_TABLE,
    PROCESSED_TABLE,
    QUARANTINE_TABLE,
)

log = logging.getLogger(__name__)

# The tables an image's rows are removed from, each with the column that names one row for the MERGE.
HOLDING_TABLES = ((IMAGES_TABLE, "path"), (DUPLICATES_TABLE, "path"), (QUARANTINE_TABLE, "path"),
                  (PROCESSED_TABLE, "sha256"), (LABEL_CONFLICTS_TABLE, "path"))
# Delta refuses a VACUUM retention below this unless its check is turned off for the command.
DELTA_DEFAULT_RETENTION_HOURS = 168


@dataclass
class Removed:
    """What a removal did: rows deleted per table, table files vacuumed per table."""

    rows: dict = field(default_factory=dict)
    vacuumed_files: dict = field(default_factory=dict)


def _frame(spark: SparkSession, column: str, values: Iterable[str]) -> DataFrame:
    """A one-column frame of the distinct ``values``, held by the driver (no lineage to any table)."""
    return spark.createDataFrame([(v,) for v in sorted(set(values))], f"{column} string")


def _existing(spark: SparkSession, config: PipelineConfig, name: str) -> Optional[DataFrame]:
    table = config.table(name)
    return tables.table_frame(spark, table) if tables.is_delta_table(spark, table) else None


def held_at(spark: SparkSession, config: PipelineConfig, paths: DataFrame) -> DataFrame:
    """(sha256, path): the contents that the rows of ``paths`` (column ``path``) hold in ``images``,
    ``duplicates`` and ``quarantine``."""
    found = spark.createDataFrame([], "sha256 string, path string")
    for name in (IMAGES_TABLE, DUPLICATES_TABLE, QUARANTINE_TABLE):
        frame = _existing(spark, config, name)
        if frame is not None:
            found = found.union(frame.join(paths, "path", "left_semi").select("sha256", "path"))
    return found.filter(F.col("sha256").isNotNull()).distinct()


def remove(spark: SparkSession, config: PipelineConfig, paths: DataFrame, sha256s: DataFrame, run_id: str,
           metadata: dict) -> Removed:
    """Delete every row whose path is in ``paths`` or whose sha256 is in ``sha256s`` from the tables that
    hold images, then vacuum those that changed with ``forget.retention_hours``."""
    removed = Removed()
    for name, key in HOLDING_TABLES:
        frame = _existing(spark, config, name)
        if frame is None:
            continue
        doomed = frame.join(sha256s, "sha256", "left_semi")
        if "path" in frame.columns:
            doomed = doomed.union(frame.join(paths, "path", "left_semi"))
        if "other_path" in frame.columns:  # a label conflict that names a removed file
            doomed = doomed.union(frame.join(paths.withColumnRenamed("path", "other_path"), "other_path", "left_semi"))
        doomed = doomed.select(key).distinct().persist()
        try:
            n = doomed.count()
            if n:
                with tables.commit_metadata(spark, {**metadata, "run_id": run_id}):
                    metrics = tables.retry_on_conflict(f"forget from {name}", functools.partial(
                        tables.merge, spark, config.table(name), doomed, f"t.`{key}` = s.`{key}`", delete_when="true"))
                removed.rows[name] = int(metrics.get("num_deleted_rows") or 0)
        finally:
            doomed.unpersist()
    for name in removed.rows:
        removed.vacuumed_files[name] = vacuum(spark, config, name, config.forget.retention_hours)
    log.info("removed rows %s; table files vacuumed %s", removed.rows, removed.vacuumed_files)
    return removed


def vacuum(spark: SparkSession, config: PipelineConfig, name: str, retention_hours: int) -> int:
    """VACUUM the table with ``retention_hours``; returns how many files it deleted (from the commit
    Delta records for it)."""
    table = config.table(name)
    check = "false" if retention_hours < DELTA_DEFAULT_RETENTION_HOURS else None
    with tables.temporary_conf(spark, "spark.databricks.delta.retentionDurationCheck.enabled", check):
        spark.sql(f"VACUUM {tables.sql_name(table)} RETAIN {int(retention_hours)} HOURS").collect()
    for entry in tables.history(spark, table, limit=3):
        if entry["operation"] == "VACUUM END":
            return int(entry["metrics"].get("numDeletedFiles") or 0)
    return 0


def _block(spark: SparkSession, config: PipelineConfig, named: dict, reason: str, run_id: str) -> int:
    """Record the forgotten contents (sha256 -> one of their paths, or None); returns how many are new."""
    rows = spark.createDataFrame(sorted(named.items(), key=lambda item: item[0]), "sha256 string, path string").select(
        "sha256", "path", F.lit(reason).alias("reason"), F.current_timestamp().alias("forgotten_at"),
        F.lit(run_id).alias("run_id"))
    with tables.commit_metadata(spark, {"job": "forget", "run_id": run_id}):
        return tables.upsert(spark, config.table(FORGOTTEN_TABLE), FORGOTTEN_SCHEMA, rows, ["sha256"],
                             check_first=True, run_id=run_id)


def forgotten_contents(spark: SparkSession, config: PipelineConfig) -> Optional[DataFrame]:
    """The ``forgotten`` table's (sha256, reason), or None while nothing was ever forgotten."""
    frame = _existing(spark, config, FORGOTTEN_TABLE)
    return frame.select("sha256", "reason") if frame is not None else None


def purge_missing(spark: SparkSession, config: PipelineConfig, base: str, listed_paths: list, run_id: str) -> int:
    """``ingest.missing: purge``: remove every row under ``base`` whose file is no longer listed, and the
    rows of the contents those images held, as :func:`forget` does but without refusing the content if it
    comes back; returns how many ``images`` rows went."""
    listed = _frame(spark, "path", listed_paths)
    gone_paths = set()
    for name in (IMAGES_TABLE, DUPLICATES_TABLE, QUARANTINE_TABLE):
        frame = _existing(spark, config, name)
        if frame is not None:
            gone_paths.update(r["path"] for r in frame.select("path").filter(F.col("path").startswith(base + "/"))
                              .join(listed, "path", "left_anti").distinct().collect())
    if not gone_paths:
        return 0
    gone = _frame(spark, "path", gone_paths)
    images = _existing(spark, config, IMAGES_TABLE)
    contents = _frame(spark, "sha256", [r["sha256"] for r in images.join(gone, "path", "left_semi").select("sha256")
                                        .distinct().collect()] if images is not None else [])
    removed = remove(spark, config, gone, contents, run_id, {"job": "ingest", "purged": True})
    return removed.rows.get(IMAGES_TABLE, 0)


def forget(spark: SparkSession, config: PipelineConfig, paths: Iterable[str], sha256s: Iterable[str], reason: str,
           run_id: str) -> dict:
    """Forget the images at ``paths`` (as the tables hold them: qualified, e.g. ``file:/...``) and with the
    contents ``sha256s``; returns what was removed, vacuumed and recorded, and (``content_frame``) the
    forgotten contents as a frame, to look for in exports."""
    path_frame = _frame(spark, "path", paths)
    # Collected: a frame computed from the tables would be computed again after each removal, and find less.
    named: dict = dict.fromkeys(sha256s)
    for row in held_at(spark, config, path_frame).collect():
        if named.get(row["sha256"]) is None or row["path"] < named[row["sha256"]]:
            named[row["sha256"]] = row["path"]
    contents = _frame(spark, "sha256", named)
    n = len(named)
    blocked = _block(spark, config, named, reason, run_id) if n else 0
    removed = remove(spark, config, path_frame, contents, run_id, {"job": "forget"})
    return {"contents": n, "newly_forgotten": blocked, "removed_rows": removed.rows,
            "vacuumed_files": removed.vacuumed_files, "content_frame": contents}
