"""Delta table helpers: create-if-missing, idempotent MERGE with commit metadata, versioned reads."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import random
import time
import uuid
from typing import Callable, Iterator, Optional, Sequence, TypeVar, Union

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from imgshards.config import Table
from imgshards.session import default_parallelism, is_connect, set_or_warn

log = logging.getLogger(__name__)
T = TypeVar("T")

# Delta's commit conflicts (optimistic concurrency): another writer committed something this transaction
# read. Matched by the Java class name as well, for runtimes whose Python package does not convert them.
CONFLICT_ATTEMPTS = 6
CONFLICT_BASE_DELAY_S = 0.5


_CONFLICTS = ("DeltaConcurrentModificationException", "MetadataChangedException", "ProtocolChangedException")


def is_conflict(e: BaseException) -> bool:
    name = type(e).__name__
    return name.startswith("Concurrent") or name in _CONFLICTS or "io.delta.exceptions." in str(e)


def retry_on_conflict(what: str, attempt: Callable[[], T], attempts: int = CONFLICT_ATTEMPTS) -> T:
    """Run ``attempt`` until it commits without a Delta conflict: after a conflict (nothing of the failed
    transaction is visible) wait with exponential backoff and jitter, then run it again from a fresh read.
    ``attempt`` must recompute what it writes from the table's latest version."""
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except Exception as e:
            if not is_conflict(e) or n == attempts:
                raise
            delay = CONFLICT_BASE_DELAY_S * 2 ** (n - 1) * (1 + random.random())
            log.warning("%s: another writer committed first (%s); retrying from the new version in %.1f s "
                        "(attempt %d of %d)", what, type(e).__name__, delay, n + 1, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


class ConcurrentCreation(RuntimeError):
    """Another writer was creating the same table (its log not yet committed): retried as a conflict."""


class ConcurrentCommitSinceRead(RuntimeError):
    """Another writer committed to a table after the version a write was computed from, and before the write
    began (which Delta's own check, from the version the write reads, cannot see): retried as a conflict."""


class TableVersionError(ValueError):
    """A Delta version that the table does not have; or a table that lacks columns this version writes."""


# A join side of up to this many metadata rows (a few hundred bytes each) is broadcast, so that the other
# side, which carries image bytes, is not shuffled (616 MB for 5,161 photos); beyond it, a shuffle join.
BROADCAST_ROWS = 1_000_000

_USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
_CREATED_HERE: set = set()  # tables this process created (empty, at version 0), by str(Table)
_SCHEMAS_HERE: set = set()  # schemas this process made sure of

# Every function takes a table as a :class:`~imgshards.config.Table` (a folder, or a name in the session's
# catalog) or as a folder's path. On a Spark Connect session the Delta Python API needs Delta's Connect server
# plugin, which a platform may not have; there the same operations go through Delta's SQL, on the table's name
# or on its path (``delta.`<path>```). Named tables and MERGE go through SQL on classic sessions too.
TableLike = Union[Table, str]


def as_table(table: TableLike) -> Table:
    return table if isinstance(table, Table) else Table(path=table)


def sql_name(table: Table) -> str:
    if table.name:
        return table.name
    assert table.path is not None
    return "delta.`" + table.path.replace("`", "``") + "`"


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_delta_table(spark: SparkSession, table: TableLike) -> bool:
    """Whether the table exists: by name in the catalog; a folder by asking Delta (classic), or on Spark
    Connect from one listing of its log where pyarrow reaches the storage (no Spark job), else by asking Delta."""
    t = as_table(table)
    if t.name:
        return spark.catalog.tableExists(t.name)
    if not is_connect(spark):
        return DeltaTable.isDeltaTable(spark, t.path)
    found = _commit_files(spark, t)
    if found is not None:
        return bool(found[1])
    try:
        spark.sql(f"DESCRIBE DETAIL {sql_name(t)}").collect()
        return True
    except Exception:
        return False


def table_frame(spark: SparkSession, table: TableLike) -> DataFrame:
    """The table's latest version."""
    t = as_table(table)
    return spark.read.table(t.name) if t.name else spark.read.format("delta").load(t.path)


def _ensure_schema(spark: SparkSession, table: Table) -> None:
    """CREATE SCHEMA IF NOT EXISTS for a named table's schema, once per process."""
    schema = table.name.rsplit(".", 1)[0] if table.name and "." in table.name else None
    if schema is None or schema in _SCHEMAS_HERE:
        return
    if spark.conf.get("spark.sql.catalogImplementation", "in-memory") == "in-memory":
        log.warning("tables.schema: this Spark session's catalog is in memory, so the names of %s's tables last "
                    "as long as the session; give it a metastore (docs/clusters.md, Tables by name)", schema)
    try:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}").collect()
    except Exception as e:
        # Unity Catalog: creating a schema takes a privilege that using one does not; the table's creation
        # says clearly whether the schema is there.
        log.warning("schema %s not created (%s: %s)", schema, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    _SCHEMAS_HERE.add(schema)


def ensure_table(spark: SparkSession, table: TableLike, schema: StructType, added: tuple = ()) -> None:
    """Create the Delta table empty with ``schema`` if it does not exist; where an older version wrote it, add
    the ``added`` columns it lacks (null on its rows) and fail naming any other column it lacks."""
    t = as_table(table)

    def create() -> None:
        if not is_delta_table(spark, t):
            log.info("creating Delta table %s", t)
            # A metadata-only first commit (no empty Parquet file, no write job), a fraction of the
            # time of writing an empty DataFrame. Nullable columns, as a DataFrame write would have made them.
            nullable = StructType([StructField(f.name, f.dataType, True, f.metadata) for f in schema.fields])
            try:
                if t.name or is_connect(spark):
                    _ensure_schema(spark, t)
                    columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in nullable.fields)
                    location = f" LOCATION {_sql_string(t.path)}" if t.name and t.path else ""
                    spark.sql(f"CREATE TABLE IF NOT EXISTS {sql_name(t)} ({columns}) USING delta{location}").collect()
                else:
                    DeltaTable.createIfNotExists(spark).location(t.path).addColumns(nullable).execute()
            except Exception as e:
                if "NON_EMPTY_LOCATION" in str(e):  # another writer is creating it right now: look again
                    raise ConcurrentCreation(f"{t} is being created by another writer") from e
                raise
            _CREATED_HERE.add(str(t))

    retry_on_conflict(f"creating {t}", create)  # two writers creating it at once: one wins, both go on
    missing = [name for name in schema.fieldNames() if name not in table_frame(spark, t).columns]
    addable = [f for f in schema.fields if f.name in missing and f.name in added]
    if addable and len(addable) == len(missing):
        log.info("adding the columns %s to %s", [f.name for f in addable], t)
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in addable)
        retry_on_conflict(f"adding columns to {t}", lambda: spark.sql(
            f"ALTER TABLE {sql_name(t)} ADD COLUMNS ({columns})").collect())
        missing = []
    if missing:
        raise TableVersionError(f"{t} was written by an older imgshards and lacks the columns {missing}; "
                                f"move it aside (processed is remade from images by the next preprocess)")


def merge(spark: SparkSession, table: TableLike, source: DataFrame, condition: str, *, delete_when: Optional[str] = None,
          update_all_when: Optional[str] = None, update_set: Optional[dict] = None, insert_all: bool = False) -> dict:
    """MERGE ``source`` (alias ``s``) into the table (alias ``t``) on ``condition``: matched rows
    deleted where ``delete_when`` holds, updated from ``s`` where ``update_all_when`` holds or set by
    ``update_set`` (column -> SQL expression), unmatched rows inserted with ``insert_all``. Returns the
    MERGE's own metrics (``num_inserted_rows``, ``num_updated_rows``, ``num_deleted_rows``): those of this
    commit, whatever other writers commit meanwhile.

    Delta's SQL on every session: its Python builder needs Delta's Connect plugin on Spark Connect, and
    returns no metrics before Delta 4."""
    t = as_table(table)
    clauses = []
    if delete_when:
        clauses.append(f"WHEN MATCHED AND ({delete_when}) THEN DELETE")
    if update_all_when:
        clauses.append(f"WHEN MATCHED AND ({update_all_when}) THEN UPDATE SET *")
    if update_set:
        clauses.append("WHEN MATCHED THEN UPDATE SET " + ", ".join(f"t.`{k}` = {v}" for k, v in update_set.items()))
    if insert_all:
        clauses.append("WHEN NOT MATCHED THEN INSERT *")
    # A global temporary view: the source may belong to another session than ``spark`` (a stream's
    # micro-batch runs in a clone of the job's session), and the MERGE runs in ``spark``, whose settings
    # (the commit metadata) it must carry.
    view = f"imgshards_merge_{uuid.uuid4().hex}"
    source.createOrReplaceGlobalTempView(view)
    try:
        rows = spark.sql(f"MERGE INTO {sql_name(t)} AS t USING global_temp.{view} AS s ON {condition} "
                         f"{' '.join(clauses)}").collect()
    finally:
        spark.catalog.dropGlobalTempView(view)
    return rows[0].asDict() if rows else {}


def history_frame(spark: SparkSession, table: TableLike, limit: int) -> DataFrame:
    """Delta's DESCRIBE HISTORY of the table, newest first (a Spark job and a log replay)."""
    t = as_table(table)
    if is_connect(spark) or t.name:
        return spark.sql(f"DESCRIBE HISTORY {sql_name(t)} LIMIT {int(limit)}")
    return DeltaTable.forPath(spark, t.path).history(limit)


def latest_version(spark: SparkSession, table: TableLike) -> int:
    """The table's latest version. For a folder on a classic session, asked of open-source Delta's
    transaction log in the JVM (no Spark job); elsewhere, where that class is not there (Databricks ships
    Delta under other names), or where there is no table (the log says -1), from the table's history (a
    Spark job; it raises for no table)."""
    t = as_table(table)
    version = -1
    if not is_connect(spark) and not t.name:
        try:
            delta_log = spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, t.path)
            none = spark._jvm.scala.Option.empty()
            version = int(delta_log.update(False, none, none).version())
        except Exception as e:
            log.debug("Delta log of %s not asked directly (%s); reading its history", t, type(e).__name__)
    if version >= 0:
        return version
    return history_frame(spark, t, 1).select("version").head()[0]


def _commit_files(spark: SparkSession, table: Table) -> Optional[tuple]:
    """(pyarrow file system, {version: commit file}) of a table folder from one listing of its
    ``_delta_log`` (no Spark job, no log replay; empty when there is no table); None for a named table
    (the catalog governs its files) and where pyarrow does not reach the storage (gs://, abfss://)."""
    import pyarrow.fs as pafs

    from imgshards.io import storage

    if table.name or not table.path:
        return None
    try:
        fs, root = storage.arrow_fs(spark, table.path.rstrip("/") + "/_delta_log")
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, ValueError):
        return None
    return fs, {int(i.base_name[:-5]): i.path for i in infos
                if i.base_name.endswith(".json") and i.base_name[:-5].isdigit()}


def log_version(spark: SparkSession, table: TableLike) -> Optional[int]:
    """The table's latest version, None when there is no table. A folder's from one listing of its
    ``_delta_log`` (None too where pyarrow does not reach the storage: the report then says unknown); a
    named table's from the catalog and its history (Spark jobs)."""
    t = as_table(table)
    if t.name:
        return latest_version(spark, t) if is_delta_table(spark, t) else None
    found = _commit_files(spark, t)
    return max(found[1]) if found and found[1] else None


def at_version(spark: SparkSession, table: TableLike, version: int) -> DataFrame:
    """The table as of ``version`` (Delta time travel)."""
    t = as_table(table)
    if t.name:
        return spark.sql(f"SELECT * FROM {t.name} VERSION AS OF {int(version)}")
    return spark.read.format("delta").option("versionAsOf", version).load(t.path)


def read_table(spark: SparkSession, table: TableLike, as_of_version: Optional[int] = None) -> tuple[DataFrame, int]:
    """Read a Delta table, at ``as_of_version`` or the latest; returns the DataFrame and the version read."""
    t = as_table(table)
    if not is_delta_table(spark, t):
        raise FileNotFoundError(f"no Delta table {t}; run the stage that creates it first")
    latest = latest_version(spark, t)
    version = latest if as_of_version is None else as_of_version
    if not 0 <= version <= latest:
        raise TableVersionError(f"--as-of-version {version} does not exist for {t} (latest is {latest})")
    return at_version(spark, t, version), version


@contextlib.contextmanager
def temporary_conf(spark: SparkSession, key: str, value: Optional[str]) -> Iterator[None]:
    """Set a Spark SQL setting for the block, then put back what was there (``value`` None: leave it). A
    platform that does not let a job set it (Databricks serverless takes a few settings only) gets one warning
    per setting and runs the block with its own value."""
    if value is None:
        yield
        return
    previous = spark.conf.get(key, None)
    if not set_or_warn(spark.conf, key, value):
        yield
        return
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


# File scan tasks per core of the stages that run Python over table rows: images differ in cost, and one task
# left alone at the end idles the other cores. Spark's own floor is one task per core, and a table's files
# of up to 128 MB each are packed together below that.
SCAN_TASKS_PER_CORE = 4


def spread_scans(spark: SparkSession):
    """File scans planned inside the block split into at least SCAN_TASKS_PER_CORE tasks per core (as far as
    the files' row groups allow)."""
    tasks = str(SCAN_TASKS_PER_CORE * default_parallelism(spark))
    return temporary_conf(spark, "spark.sql.files.minPartitionNum", tasks)


def commit_metadata(spark: SparkSession, metadata: dict):
    """Attach ``metadata`` (JSON) as Delta commit user metadata to every commit made inside the block."""
    return temporary_conf(spark, _USER_METADATA_CONF, json.dumps(metadata, sort_keys=True, default=str))


def append(spark: SparkSession, table: TableLike, schema: StructType, rows: DataFrame, read_version: int,
           keys: Sequence[str], run_id: str) -> int:
    """Append ``rows`` (new keys, by the caller's anti-join against version ``read_version``) to the table:
    about 6x cheaper than a MERGE, which would scan the target for keys the caller already excluded.

    A blind append cannot conflict in Delta, so when another writer committed since ``read_version`` the
    keys both wrote are resolved here: every writer keeps, for a repeated key, the row of the smallest run
    id and deletes the others (a DELETE that Delta serializes; conflicts retried). Concurrent writers reach
    the same result in any order. Returns the version written."""
    t = as_table(table)
    writer = rows.select(*schema.fieldNames()).write.format("delta").mode("append")
    if t.name:
        writer.saveAsTable(t.name)
    else:
        writer.save(t.path)
    written = latest_version(spark, t)
    if written != read_version + 1:
        retry_on_conflict(f"{t}: repeated keys", lambda: _drop_repeated_keys(spark, t, keys, run_id))
    return written


def _drop_repeated_keys(spark: SparkSession, t: Table, keys: Sequence[str], run_id: str) -> None:
    table = table_frame(spark, t)
    mine = table.filter(F.col("run_id") == run_id).select(*keys)
    repeated = (table.join(mine, list(keys), "left_semi").groupBy(*keys)
                .agg(F.min("run_id").alias("keep"), F.count(F.lit(1)).alias("n")).filter("n > 1").persist())
    try:
        n = repeated.count()
        if n:
            condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
            merge(spark, t, repeated, condition, delete_when="t.run_id <> s.keep")
            log.warning("%s: another writer appended %d of the same keys at the same time; the rows of the "
                        "earliest run id were kept", t, n)
    finally:
        repeated.unpersist()


def upsert(
    spark: SparkSession,
    table: TableLike,
    schema: StructType,
    rows: DataFrame,
    keys: Sequence[str],
    *,
    update_when: Optional[str] = None,
    check_first: bool = False,
    run_id: Optional[str] = None,
) -> int:
    """MERGE ``rows`` into the table keyed on ``keys``: insert new keys; update matched rows
    when ``update_when`` (a condition on ``t``/``s``) holds, or never when it is None. Re-running with the
    same rows changes nothing. Returns the rows inserted + updated (from the commit's metrics).

    ``check_first``: count the rows the MERGE would insert or update with one join first, and skip the
    MERGE when there are none (a MERGE that changes nothing still plans, scans and checks for conflicts:
    several Spark jobs). For small sources that are cheap to compute twice (quarantine, duplicates).

    ``run_id`` (the rows' run_id column): when this process has just created the table (still at its empty
    version 0), the rows are appended instead (see :func:`append`; a concurrent writer's same keys are
    resolved there). Not for tables whose rows must also be checked against each other (images)."""
    t = as_table(table)
    ensure_table(spark, t, schema)
    before = latest_version(spark, t)
    if run_id is not None and before == 0 and str(t) in _CREATED_HERE:
        rows = rows.persist()
        try:
            append(spark, t, schema, rows, before, keys, run_id)
            return rows.count()
        finally:
            rows.unpersist()
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    if check_first:
        target = table_frame(spark, t).alias("t")
        changes = F.col(f"t.`{keys[0]}`").isNull()
        if update_when is not None:
            changes = changes | F.expr(update_when)
        if rows.alias("s").join(target, F.expr(condition), "left").filter(changes).limit(1).count() == 0:
            return 0
    metrics = merge(spark, t, rows.select(*schema.fieldNames()), condition, update_all_when=update_when, insert_all=True)
    return int(metrics.get("num_inserted_rows") or 0) + int(metrics.get("num_updated_rows") or 0)


def history(spark: SparkSession, table: TableLike, limit: int = 20) -> list:
    """The latest ``limit`` versions of the table: version, timestamp, operation, and our commit metadata
    (run id, job, config fingerprint, counts) parsed from the user metadata. Read from the newest commit files
    themselves, as Delta's DESCRIBE HISTORY does, but without its Spark jobs and log replay (the report
    asks this of four tables); for named tables and where pyarrow does not reach the storage, from DESCRIBE
    HISTORY."""
    t = as_table(table)
    found = _commit_files(spark, t)
    if found is None:
        return _described_history(spark, t, limit)
    fs, files = found
    out = []
    for version in sorted(files, reverse=True)[:limit]:
        try:
            with fs.open_input_stream(files[version]) as f:
                actions = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        except FileNotFoundError:  # removed by the log's clean-up since the listing
            continue
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        timestamp = dt.datetime.fromtimestamp(info["timestamp"] / 1000) if "timestamp" in info else None
        out.append(_history_row(version, timestamp, info.get("operation"), info.get("userMetadata"),
                                info.get("operationMetrics")))
    return out


def _described_history(spark: SparkSession, t: Table, limit: int) -> list:
    if not is_delta_table(spark, t):
        return []
    rows = history_frame(spark, t, limit).select(
        "version", "timestamp", "operation", "userMetadata", "operationMetrics").collect()
    return [_history_row(r["version"], r["timestamp"], r["operation"], r["userMetadata"], r["operationMetrics"])
            for r in rows]


def _history_row(version: int, timestamp: Optional[dt.datetime], operation: Optional[str],
                 user_metadata: Optional[str], metrics: Optional[dict]) -> dict:
    try:
        metadata = json.loads(user_metadata) if user_metadata else {}
    except ValueError:
        metadata = {"userMetadata": user_metadata}
    return {"version": version, "timestamp": timestamp.isoformat() if timestamp else None, "operation": operation,
            "metrics": dict(metrics or {}), **metadata}
