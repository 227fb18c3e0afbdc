"""One schema per table and per exported dataset, defined here and imported everywhere."""
from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

IMAGES_TABLE = "images"
QUARANTINE_TABLE = "quarantine"
DUPLICATES_TABLE = "duplicates"
PROCESSED_TABLE = "processed"
FORGOTTEN_TABLE = "forgotten"
LABEL_CONFLICTS_TABLE = "label_conflicts"
TABLES = (IMAGES_TABLE, QUARANTINE_TABLE, DUPLICATES_TABLE, PROCESSED_TABLE, FORGOTTEN_TABLE, LABEL_CONFLICTS_TABLE)

SPLITS = ("train", "val", "test")

# Delta table `images`: one row per distinct image content that was accepted.
IMAGES_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("content", BinaryType(), False),
        StructField("sha256", StringType(), False),
        StructField("size_bytes", LongType(), False),
        StructField("format", StringType(), False),
        StructField("width", IntegerType(), False),
        StructField("height", IntegerType(), False),
        StructField("split", StringType(), False),
        StructField("group_key", StringType(), True),
        StructField("phash", LongType(), True),
        StructField("near_dup_cluster", StringType(), True),
        StructField("ingested_at", TimestampType(), False),
        StructField("deleted_at", TimestampType(), True),
        StructField("run_id", StringType(), False),
        # Added in format 2 (imgshards.imaging.fingerprint): an older table gets them, null on its rows.
        StructField("phash_fine", ArrayType(LongType(), False), True),
        StructField("brightness", FloatType(), True),
        StructField("contrast", FloatType(), True),
        StructField("sharpness", FloatType(), True),
    ]
)
# Columns added to `images` since its first release: added to a table that lacks them (null on its rows).
IMAGES_ADDED_COLUMNS = ("phash_fine", "brightness", "contrast", "sharpness")

# Delta table `quarantine`: one row per (path, stage) that could not be used, with a reason from
# imaging.QUARANTINE_REASONS.
QUARANTINE_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("stage", StringType(), False),
        StructField("reason", StringType(), False),
        StructField("detail", StringType(), True),
        StructField("size_bytes", LongType(), True),
        StructField("sha256", StringType(), True),
        StructField("quarantined_at", TimestampType(), False),
        StructField("run_id", StringType(), False),
    ]
)

# `quarantine` is keyed on (path, stage); a row is rewritten when its verdict or content changed.
QUARANTINE_KEYS = ("path", "stage")
QUARANTINE_CHANGED = "NOT (t.reason <=> s.reason) OR NOT (t.sha256 <=> s.sha256)"

# Delta table `duplicates`: files whose content is already in `images` under another path.
DUPLICATES_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("sha256", StringType(), False),
        StructField("duplicate_of", StringType(), False),
        StructField("detected_at", TimestampType(), False),
        StructField("run_id", StringType(), False),
    ]
)

# Delta table `label_conflicts`: files whose label differs from that of the same content (``kind`` duplicate:
# ``other_path`` holds the content already) or of their near-duplicate cluster (near_duplicate: ``other_label`` is
# the label most of the cluster has, ``other_path`` the first path with it). Keyed on path.
LABEL_CONFLICTS_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("kind", StringType(), False),
        StructField("other_path", StringType(), True),
        StructField("other_label", StringType(), True),
        StructField("sha256", StringType(), False),
        StructField("detected_at", TimestampType(), False),
        StructField("run_id", StringType(), False),
    ]
)

# Delta table `forgotten`: contents removed for good by the forget job (imgshards.ingest.forget), keyed on
# sha256; ingest quarantines a file with one of them as `forgotten`.
FORGOTTEN_SCHEMA = StructType(
    [
        StructField("sha256", StringType(), False),
        StructField("path", StringType(), True),
        StructField("reason", StringType(), False),
        StructField("forgotten_at", TimestampType(), False),
        StructField("run_id", StringType(), False),
    ]
)

# Delta table `processed`: one row per output sample and preprocess config. A sample is an image
# (copy 0) or one of its augmented copies (copy 1..n, with the seed its random parameters came from).
PROCESSED_SCHEMA = StructType(
    [
        StructField("sha256", StringType(), False),
        StructField("copy", IntegerType(), False),
        StructField("augment_seed", LongType(), True),
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("split", StringType(), False),
        StructField("image", BinaryType(), False),
        StructField("image_format", StringType(), False),
        StructField("width", IntegerType(), False),
        StructField("height", IntegerType(), False),
        StructField("config_fingerprint", StringType(), False),
        StructField("source_version", LongType(), False),
        StructField("backend", StringType(), False),
        StructField("device", StringType(), False),
        StructField("task_gpu", StringType(), True),
        StructField("processed_at", TimestampType(), False),
        StructField("run_id", StringType(), False),
    ]
)
SAMPLE_KEY = ("sha256", "copy", "config_fingerprint")


# The columns of an exported split, in order (their Petastorm types: imgshards.export.unischema).
EXPORT_COLUMNS = ("image", "label", "label_name", "sample_id", "sha256", "copy", "augment_seed")
