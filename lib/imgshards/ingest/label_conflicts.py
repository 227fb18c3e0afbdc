"""Label conflicts: a file whose label differs from that of the same content (an exact duplicate filed under
another class) or from the label most of its near-duplicate cluster has. Found during ingest's write, kept in
the ``label_conflicts`` table (keyed on path), counted in the run's summary and metrics, shown in the report;
with ``ingest.label_conflicts: majority`` a new near-duplicate under a minority label takes the cluster's."""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from imgshards.config import PipelineConfig
from imgshards.delta import tables
from imgshards.ingest.counts import IngestCounts
from imgshards.ingest.rules import EXAMPLES
from imgshards.schemas import LABEL_CONFLICTS_SCHEMA, LABEL_CONFLICTS_TABLE

_COLUMNS = ("path", "label", "kind", "other_path", "other_label", "sha256")


def _differ(label: str, other: str) -> F.Column:
    """Both labelled, and not alike (no label is not a conflict)."""
    return F.col(label).isNotNull() & F.col(other).isNotNull() & (F.col(label) != F.col(other))


def of_duplicates(duplicates: DataFrame, kept: DataFrame) -> DataFrame:
    """The ``duplicates`` (path, label, sha256, duplicate_of) whose label differs from that of the path they
    duplicate, looked up in ``kept`` (path, label: the live rows and the rows this batch writes)."""
    return (duplicates.alias("d").join(kept.dropDuplicates(["path"]).alias("k"), F.col("d.duplicate_of") == F.col("k.path"))
            .filter(_differ("d.label", "k.label"))
            .select("d.path", "d.label", F.lit("duplicate").alias("kind"), F.col("k.path").alias("other_path"),
                    F.col("k.label").alias("other_label"), "d.sha256"))


def of_clusters(accepted: DataFrame) -> DataFrame:
    """The accepted rows, joined to their clusters (cluster_label, label_example), under another label."""
    return accepted.filter(_differ("label", "cluster_label")).select(
        "path", "label", F.lit("near_duplicate").alias("kind"), F.col("label_example").alias("other_path"),
        F.col("cluster_label").alias("other_label"), "sha256")


def majority(accepted: DataFrame) -> DataFrame:
    """``ingest.label_conflicts: majority``: a row under a minority label takes its cluster's."""
    return accepted.withColumn("label", F.when(_differ("label", "cluster_label"), F.col("cluster_label"))
                               .otherwise(F.col("label")))


def record(spark: SparkSession, config: PipelineConfig, conflicts: DataFrame, counts: IngestCounts, run_id: str) -> None:
    """Count ``conflicts`` into ``counts.label_conflicts`` (per kind, and the first examples) and write them
    into ``label_conflicts`` when there are any."""
    conflicts = conflicts.select(*_COLUMNS).persist()
    try:
        found = {r["kind"]: r["count"] for r in conflicts.groupBy("kind").count().collect()}
        if not found:
            return
        examples = [r.asDict() for r in conflicts.orderBy("path").limit(EXAMPLES).collect()]
        report = counts.label_conflicts
        for kind, n in found.items():
            report[kind] = report.get(kind, 0) + n
        report["examples"] = (report.get("examples", []) + examples)[:EXAMPLES]
        rows = conflicts.select(*_COLUMNS, F.current_timestamp().alias("detected_at"), F.lit(run_id).alias("run_id"))
        tables.upsert(spark, config.table(LABEL_CONFLICTS_TABLE), LABEL_CONFLICTS_SCHEMA, rows, ["path"],
                      update_when="NOT (t.label <=> s.label) OR t.kind <> s.kind OR NOT (t.other_label <=> s.other_label)",
                      check_first=True, run_id=run_id)
    finally:
        conflicts.unpersist()
