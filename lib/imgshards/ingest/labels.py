"""Labels from a labels file (CSV, TSV or JSON lines) joined to the listed files, and the report of its
entries that name no file.
"""
from __future__ import annotations

import logging
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from imgshards.config import LabelsConfig, PipelineConfig
from imgshards.ingest.rules import EXAMPLES
from imgshards.io import storage

log = logging.getLogger(__name__)


def read_labels_file(spark: SparkSession, labels: LabelsConfig) -> DataFrame:
    """The labels file as (label_key, file_label, file_group): CSV/TSV with a header, or JSON lines."""
    path = labels.file
    labels_file_status(spark, labels)  # a missing file fails here, naming the setting
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


def label_key(relative: F.Column, labels: LabelsConfig) -> F.Column:
    return relative if labels.key == "path" else F.element_at(F.split(relative, "/"), -1)


def labels_report(spark, config: PipelineConfig, labels: DataFrame, relatives: list) -> dict:
    """Labels-file entries that name no file under the input, with examples, and among them those that point
    outside the input root (absolute paths, URLs, ``..``). Files are only ever read from the input's own
    listing, so no entry can make ingest read anything; these are reported so that they can be fixed."""
    listed = spark.createDataFrame([(r,) for r in relatives], "relative string")
    keys = listed.select(label_key(F.col("relative"), config.ingest.labels).alias("label_key"))
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

def labels_file_status(spark: SparkSession, labels) -> Optional[list]:
    """[size, modification time] of the labels file (None without one); a missing one fails naming the key."""
    if labels.source != "file":
        return None
    try:
        return list(storage.file_status(spark, labels.file))
    except FileNotFoundError as e:
        raise storage.InputPathError(f"ingest.labels.file does not exist: {labels.file}") from e
