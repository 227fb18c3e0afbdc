"""What a run leaves under ``<warehouse>/_state`` so that the next one can tell that nothing changed.

A stage whose result depends only on the tables (and its settings) stores it with the tables' versions;
a later run that finds the same versions, read from each table's ``_delta_log`` listing without a Spark job,
reuses it instead of asking Spark and Delta again (which in a fresh JVM costs seconds before the first job).
A result is stored only when the tables' versions after it are the ones it read, or every commit in between
is the run's own (see :func:`only_own_commits`). Local and S3 warehouses: elsewhere every run asks Spark.
See :mod:`imgshards.ingest.state` (ingest), ``preprocess.run_preprocess`` and ``report.write_report``.
"""
from __future__ import annotations

import base64
import json
import logging
from typing import Optional, Sequence
from urllib.parse import urlparse

from pyspark.sql import SparkSession

from imgshards.config import PipelineConfig, join_path
from imgshards.delta import tables
from imgshards.io import storage

log = logging.getLogger(__name__)


def usable(config: PipelineConfig) -> bool:
    """Whether the tables are folders in a warehouse where their logs and the state can be read without
    Spark (named tables are read through the catalog: every run asks it)."""
    if config.tables.schema is not None:
        return False
    return urlparse(config.warehouse).scheme in ("", "file") or storage.is_s3(config.warehouse)


def _url(config: PipelineConfig, name: str) -> str:
    return join_path(config.warehouse, "_state", name + ".json")


def load(spark: SparkSession, config: PipelineConfig, name: str) -> Optional[dict]:
    """The state stored as ``name`` (``ingest/<input>``, ``preprocess``, ...), or None."""
    try:
        text = storage.read_text(spark, _url(config, name))
        return json.loads(text, object_hook=_from_json) if text else None
    except (OSError, ValueError) as e:
        log.warning("state %s not read (%s): the run asks the tables", name, e)
        return None


def save(spark: SparkSession, config: PipelineConfig, name: str, state: dict) -> None:
    try:
        storage.write_text(spark, _url(config, name), json.dumps(state, sort_keys=True, default=_to_json))
    except Exception as e:
        log.warning("state %s not written (%s): the next run asks the tables", name, e)


def _to_json(value):
    if isinstance(value, (bytes, bytearray)):  # thumbnails
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not kept in a run state")


def _from_json(obj: dict):
    return base64.b64decode(obj["__bytes__"]) if obj.keys() == {"__bytes__"} else obj


def table_versions(spark: SparkSession, config: PipelineConfig, names: Sequence[str]) -> dict:
    """Each named table's latest version from its ``_delta_log`` listing (None: no table)."""
    return {name: tables.log_version(spark, config.table(name)) for name in names}


def only_own_commits(spark: SparkSession, path: str, before: Optional[int], after: Optional[int], run_id: str) -> bool:
    """Whether every commit to the table after version ``before`` up to ``after`` is the run's own (its
    run id in the commit's user metadata) or the table's creation, read from the commits' JSON."""
    if after is None:
        return before is None
    for version in range((-1 if before is None else before) + 1, after + 1):
        text = storage.read_text(spark, join_path(path, "_delta_log", f"{version:020d}.json"))
        info = next((json.loads(line)["commitInfo"] for line in (text or "").splitlines() if '"commitInfo"' in line), None)
        if info is None:
            return False
        if info.get("operation") == "CREATE TABLE":
            continue
        try:
            own = json.loads(info.get("userMetadata") or "{}").get("run_id") == run_id
        except ValueError:
            own = False
        if not own:
            return False
    return True


def kept_after(spark: SparkSession, config: PipelineConfig, before: dict, run_id: str) -> Optional[dict]:
    """The tables' versions now, when every commit to them since ``before`` (name -> version) is the run's
    own; None when another run committed meanwhile (then nothing should be stored)."""
    after = table_versions(spark, config, list(before))
    others = [name for name in before
              if not only_own_commits(spark, config.table(name).path, before[name], after[name], run_id)]
    if others:
        log.info("another run committed to %s meanwhile: no state kept", ", ".join(others))
        return None
    return after
