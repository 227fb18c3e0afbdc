"""Label conflicts: a file whose label differs from that of the same content (an exact duplicate filed under
another class) or from the label most of its near-duplicate cluster has. Found during ingest's write, kept in
the ``label_conflicts`` table (keyed on path), counted in the run's summary and metrics, shown in the report.
``ingest.label_conflicts`` says what else happens to the file in conflict: nothing (``report``), it takes its
cluster's label (``majority``: near-duplicates only) or it is quarantined as ``label_conflict`` (``quarantine``)
instead of ingested or recorded as a duplicate; the file it conflicts with stays where it is."""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from imgshards.config import PipelineConfig
from imgshards.delta import tables
from imgshards.ingest.counts import IngestCounts
from imgshards.ingest.read import INGEST_STAGE
from imgshards.ingest.rules import EXAMPLES
from imgshards.schemas import LABEL_CONFLICTS_SCHEMA, LABEL_CONFLICTS_TABLE

_COLUMNS = ("path", "label", "kind", "other_path", "other_label", "sha256")
# Carried along for the quarantine: which bucket the file was sorted into, and its size.
_CARRIED = ("bucket", "size_bytes")


def _differ(label: str, other: str) -> F.Column:
    """Both labelled, and not alike (no label is not a conflict)."""
    return F.col(label).isNotNull() & F.col(other).isNotNull() & (F.col(label) != F.col(other))


def of_duplicates(duplicates: DataFrame, kept: DataFrame) -> DataFrame:
    """The ``duplicates`` (path, label, sha256, duplicate_of) whose label differs from that of the path they
    duplicate, looked up in ``kept`` (path, label: the live rows and the rows this batch writes)."""
    return (duplicates.alias("d").join(kept.dropDuplicates(["path"]).alias("k"), F.col("d.duplicate_of") == F.col("k.path"))
            .filter(_differ("d.label", "k.label"))
            .select("d.path", "d.label", F.lit("duplicate").alias("kind"), F.col("k.path").alias("other_path"),
                    F.col("k.label").alias("other_label"), "d.sha256", *(f"d.{c}" for c in _CARRIED)))


def of_clusters(accepted: DataFrame) -> DataFrame:
    """The accepted rows, joined to their clusters (cluster_label, label_example), under another label."""
    return accepted.filter(_differ("label", "cluster_label")).select(
        "path", "label", F.lit("near_duplicate").alias("kind"), F.col("label_example").alias("other_path"),
        F.col("cluster_label").alias("other_label"), "sha256", *_CARRIED)


@contextlib.contextmanager
def found(live: DataFrame, accepted: DataFrame, duplicates: DataFrame, clustered: bool,
          counts: IngestCounts) -> Iterator[tuple[Optional[DataFrame], dict]]:
    """The batch's conflicts of both kinds, against the ``live`` rows (path, label) and each other, persisted
    inside the block (None when there can be none) and counted into ``counts`` (:func:`count`), with how many
    per bucket."""
    parts = []
    if counts.duplicates:
        parts.append(of_duplicates(duplicates, live.select("path", "label").unionByName(accepted.select("path", "label"))))
    if clustered:
        parts.append(of_clusters(accepted))
    if not parts:
        yield None, {}
        return
    conflicts = functools.reduce(DataFrame.unionByName, parts).persist()
    try:
        yield conflicts, count(conflicts, counts)
    finally:
        conflicts.unpersist()


def majority(accepted: DataFrame) -> DataFrame:
    """``ingest.label_conflicts: majority``: a row under a minority label takes its cluster's."""
    return accepted.withColumn("label", F.when(_differ("label", "cluster_label"), F.col("cluster_label"))
                               .otherwise(F.col("label")))


def count(conflicts: DataFrame, counts: IngestCounts) -> dict:
    """Count ``conflicts`` (persisted by the caller) into ``counts.label_conflicts`` (per kind, and the first
    examples); returns how many per bucket the files had been sorted into."""
    by_bucket: dict = {}
    report = counts.label_conflicts
    for r in conflicts.groupBy("kind", "bucket").count().collect():
        report[r["kind"]] = report.get(r["kind"], 0) + r["count"]
        by_bucket[r["bucket"]] = by_bucket.get(r["bucket"], 0) + r["count"]
    if by_bucket:
        examples = [r.asDict() for r in conflicts.select(*_COLUMNS).orderBy("path").limit(EXAMPLES).collect()]
        report["examples"] = (report.get("examples", []) + examples)[:EXAMPLES]
    return by_bucket


def quarantine(conflicts: DataFrame, by_bucket: dict, counts: IngestCounts, run_id: str) -> DataFrame:
    """``ingest.label_conflicts: quarantine``: the files in conflict move from their buckets to the quarantine
    (reason ``label_conflict``, the detail naming the other file and its label); returns their quarantine rows."""
    n = sum(by_bucket.values())
    for bucket, moved in by_bucket.items():
        setattr(counts, bucket, getattr(counts, bucket) - moved)
    counts.quarantined += n
    reasons = dict(counts.quarantine_reasons)
    reasons["label_conflict"] = reasons.get("label_conflict", 0) + n
    counts.quarantine_reasons = dict(sorted(reasons.items()))
    counts.check()
    detail = F.concat(F.lit("labelled "), F.col("label"), F.lit(", but "),
                      F.when(F.col("kind") == "duplicate", F.lit("the same content at "))
                      .otherwise(F.lit("its near-duplicate cluster (e.g. ")),
                      F.col("other_path"), F.when(F.col("kind") == "duplicate", F.lit(" is ")).otherwise(F.lit(") is ")),
                      F.lit("labelled "), F.col("other_label"))
    return conflicts.select(
        "path", F.lit(INGEST_STAGE).alias("stage"), F.lit("label_conflict").alias("reason"), detail.alias("detail"),
        "size_bytes", "sha256", F.current_timestamp().alias("quarantined_at"), F.lit(run_id).alias("run_id"))


def record(spark: SparkSession, config: PipelineConfig, conflicts: DataFrame, run_id: str) -> None:
    """Write ``conflicts`` (counted already, so known to hold rows) into ``label_conflicts``."""
    rows = conflicts.select(*_COLUMNS, F.current_timestamp().alias("detected_at"), F.lit(run_id).alias("run_id"))
    tables.upsert(spark, config.table(LABEL_CONFLICTS_TABLE), LABEL_CONFLICTS_SCHEMA, rows, ["path"],
                  update_when="NOT (t.label <=> s.label) OR t.kind <> s.kind OR NOT (t.other_label <=> s.other_label)",
                  check_first=True, run_id=run_id)
