"""Delta table helpers: create-if-missing, idempotent MERGE with commit metadata, versioned reads."""
from __future__ import annotations

import contextlib
import json
import logging
from typing import Iterator, Optional, Sequence

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

class TableVersionError(ValueError):
    """A Delta version that the table does not have; or a table that lacks columns this version writes."""


_USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"


def ensure_table(spark: SparkSession, path: str, schema: StructType) -> DeltaTable:
    """Return the Delta table at ``path``, creating it empty with ``schema`` if it does not exist."""
    if not DeltaTable.isDeltaTable(spark, path):
        log.info("creating Delta table %s", path)
        spark.createDataFrame([], schema).write.format("delta").mode("ignore").save(path)
    table = DeltaTable.forPath(spark, path)
    missing = [name for name in schema.fieldNames() if name not in table.toDF().columns]
    if missing:
        raise TableVersionError(f"{path} was written by an older imgshards and lacks the columns {missing}; "
                                f"move it aside (processed is remade from images by the next preprocess)")
    return table


def latest_version(spark: SparkSession, path: str) -> int:
    return DeltaTable.forPath(spark, path).history(1).select("version").head()[0]


def log_version(spark: SparkSession, path: str) -> Optional[int]:
    """The latest version of the Delta table at ``path`` from one listing of its ``_delta_log`` (no Spark
    job, no log replay); None when there is no table."""
    import pyarrow.fs as pafs

    from imgshards import storage

    try:
        fs, root = storage.arrow_fs(spark, path.rstrip("/") + "/_delta_log")
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, ValueError):  # a scheme pyarrow does not reach (gs://, abfss://): the report says unknown
        return None
    versions = [int(i.base_name[:-5]) for i in infos if i.base_name.endswith(".json") and i.base_name[:-5].isdigit()]
    return max(versions) if versions else None


def read_table(spark: SparkSession, path: str, as_of_version: Optional[int] = None) -> tuple[DataFrame, int]:
    """Read a Delta table, at ``as_of_version`` or the latest; returns the DataFrame and the version read."""
    if not DeltaTable.isDeltaTable(spark, path):
        raise FileNotFoundError(f"no Delta table at {path}; run the stage that creates it first")
    latest = latest_version(spark, path)
    version = latest if as_of_version is None else as_of_version
    if not 0 <= version <= latest:
        raise TableVersionError(f"--as-of-version {version} does not exist for {path} (latest is {latest})")
    return spark.read.format("delta").option("versionAsOf", version).load(path), version


@contextlib.contextmanager
def temporary_conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """Set a Spark SQL setting for the block, then put back what was there."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def commit_metadata(spark: SparkSession, metadata: dict):
    """Attach ``metadata`` (JSON) as Delta commit user metadata to every commit made inside the block."""
    return temporary_conf(spark, _USER_METADATA_CONF, json.dumps(metadata, sort_keys=True, default=str))


def append(spark: SparkSession, path: str, schema: StructType, rows: DataFrame, read_version: int) -> int:
    """Append ``rows`` (new keys, by the caller's anti-join against version ``read_version``) to the table:
    about 6x cheaper than a MERGE, which would scan the target for keys the caller already excluded.
    Returns the version written; a commit by another writer since ``read_version`` is logged, since
    then rows may repeat (readers of such tables drop repeated keys)."""
    rows.select(*schema.fieldNames()).write.format("delta").mode("append").save(path)
    written = latest_version(spark, path)
    if written != read_version + 1:
        log.warning("%s: another writer committed between version %d (read) and %d (this append); "
                    "keys may repeat", path, read_version, written)
    return written


def upsert(
    spark: SparkSession,
    path: str,
    schema: StructType,
    rows: DataFrame,
    keys: Sequence[str],
    *,
    update_when: Optional[str] = None,
) -> int:
    """MERGE ``rows`` into the table at ``path`` keyed on ``keys``: insert new keys; update matched rows
    when ``update_when`` (a condition on ``t``/``s``) holds, or never when it is None. Re-running with the
    same rows changes nothing. Returns the rows inserted + updated (from the commit's metrics)."""
    table = ensure_table(spark, path, schema)
    before = latest_version(spark, path)
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    merge = table.alias("t").merge(rows.select(*schema.fieldNames()).alias("s"), condition)
    if update_when is not None:
        merge = merge.whenMatchedUpdateAll(condition=update_when)
    merge.whenNotMatchedInsertAll().execute()
    metrics = table.history(1).select("version", "operation", "operationMetrics").head()
    if metrics["version"] == before or metrics["operation"] != "MERGE":
        return 0  # Delta commits nothing when a MERGE has nothing to do
    m = metrics["operationMetrics"] or {}
    return int(m.get("numTargetRowsInserted", 0)) + int(m.get("numTargetRowsUpdated", 0))


def history(spark: SparkSession, path: str, limit: int = 20) -> list:
    """The latest ``limit`` versions of the table: version, timestamp, operation, and our commit metadata
    (run id, job, config fingerprint, counts) parsed from the user metadata."""
    if not DeltaTable.isDeltaTable(spark, path):
        return []
    rows = DeltaTable.forPath(spark, path).history(limit).select(
        "version", "timestamp", "operation", "userMetadata", "operationMetrics").collect()
    out = []
    for r in rows:
        try:
            metadata = json.loads(r["userMetadata"]) if r["userMetadata"] else {}
        except ValueError:
            metadata = {"userMetadata": r["userMetadata"]}
        out.append({"version": r["version"], "timestamp": r["timestamp"].isoformat(), "operation": r["operation"],
                    "metrics": dict(r["operationMetrics"] or {}), **metadata})
    return out
