"""Wiring shared by the jobs (``imgshards.jobs``): common arguments, config loading, the Spark session, exit codes.

Each job is ``parse_args(argv)`` -> ``run(spark, config, args)`` -> ``main()``; :func:`run_job` does the
rest so every job behaves the same: a bad setting exits 2 before Spark starts, a run summary is printed as
JSON on stdout and written under ``<workdir>/runs/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import time
import uuid
import warnings
from typing import Callable, Optional, Sequence

from imgshards import metrics, progress, storage, tables, workers
from imgshards.config import ConfigError, PipelineConfig, load_config, resolve_local
from imgshards.schemas import TABLES
from imgshards.tables import TableVersionError

log = logging.getLogger(__name__)

EXIT_BAD_CONFIG = 2


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def base_parser(description: str) -> argparse.ArgumentParser:
    # No abbreviated options: a definition saying --warehous must fail, not quietly mean --warehouse.
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--conf-file", help="pipeline config YAML (default: the package's pipeline.yaml, linked as conf/pipeline.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set preprocess.size=128 (repeatable)")
    parser.add_argument("--input", help="shortcut for --set input=PATH")
    parser.add_argument("--output", help="shortcut for --set output=PATH")
    parser.add_argument("--warehouse", help="shortcut for --set warehouse=PATH")
    parser.add_argument("--run-id", default=None, help="id recorded with every row and commit (default: generated)")
    return parser


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as-of-version", type=int, default=None, metavar="N",
                        help="read the images table at Delta version N (default: latest)")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Load and validate the config named by the arguments; local paths become absolute."""
    overrides = list(args.overrides)
    for key in ("input", "output", "warehouse"):
        value = getattr(args, key, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    config = load_config(args.conf_file, overrides)
    return dataclasses.replace(
        config,
        input=resolve_local(config.input) if config.input else None,
        warehouse=resolve_local(config.warehouse),
        output=resolve_local(config.output),
        workdir=resolve_local(config.workdir),
    )


def get_spark(app_name: str):
    """The session spark-submit or the platform configured (master, jars, Delta extensions, profile).

    Sets nothing but the app name: on Databricks and EMR the platform provides Spark, Delta and the master.
    """
    from pyspark.sql import SparkSession

    return SparkSession.builder.appName(app_name).getOrCreate()


# Jobs whose pandas UDFs run whatever they find: their Python workers start with the session. Ingest and
# preprocess (and so the pipeline) start them once they know they have work (workers.start_once).
_WORKERS_AT_START = ("export", "report")


# Which locations each job reads (input) or writes (output): checked at start, before any work.
_JOB_LOCATIONS = {"ingest": ("input", "warehouse"), "pipeline": ("input", "warehouse", "output"),
                  "preprocess": ("warehouse",), "export": ("warehouse", "output"), "report": ("warehouse", "output"),
                  "history": ("warehouse",)}


def prepare_storage(spark, config: PipelineConfig, job: str) -> None:
    """Point S3A at the configured endpoint, then check that every object-store location the job uses can
    be reached, so a wrong endpoint, bucket or credential fails at start naming the URL and the cause."""
    storage.configure_hadoop(spark, config)
    for name in _JOB_LOCATIONS.get(job, ()):
        url = getattr(config, name)
        if url:
            storage.check_s3_location(spark, url, need_objects=name == "input")


def _write_summary(config: PipelineConfig, job: str, run_id: str, summary: dict) -> str:
    runs = os.path.join(config.workdir, "runs")
    if "://" in runs:  # remote workdir: the summary goes to stdout only
        return ""
    os.makedirs(runs, exist_ok=True)
    path = os.path.join(runs, f"{run_id}-{job}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    return path


def run_job(
    job: str,
    parser: argparse.ArgumentParser,
    run: Callable[..., dict],
    argv: Optional[Sequence[str]] = None,
    formatter: Optional[Callable[[dict], str]] = None,
    stop_session: bool = True,
) -> int:
    """Parse ``argv``, validate the config, run ``run(spark, config, args, run_id)`` and print its summary.

    ``stop_session``: stop the Spark session at the end; False where the platform owns the session.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Petastorm 0.12 calls pyarrow APIs that pyarrow 14 marks deprecated; they work, the warnings are noise.
    # (Executors: spark.executorEnv.PYTHONWARNINGS in spark-defaults.conf.)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as e:
        print(f"{job}: configuration error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    run_id = args.run_id or new_run_id()
    log.info("%s run %s with config %s", job, run_id, json.dumps(config.to_dict(), default=list))
    spark = get_spark(f"imgshards-{job}")
    if job in _WORKERS_AT_START:
        workers.start_once(spark)
    try:
        started = time.monotonic()
        with progress.stage(job):
            prepare_storage(spark, config, job)
            with progress.track(spark, config.progress.interval_seconds, job):
                summary = {"job": job, "run_id": run_id, **run(spark, config, args, run_id)}
        summary.setdefault("seconds", {})[job] = round(time.monotonic() - started, 3)
        if "warehouse" in _JOB_LOCATIONS.get(job, ()):
            summary["delta_versions"] = {t: tables.log_version(spark, config.table_path(t)) for t in TABLES}
    except (ConfigError, FileNotFoundError, TableVersionError, storage.StorageError) as e:
        # Bad settings or inputs found once Spark is up (missing input path, unknown version): no traceback.
        print(f"{job}: error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    finally:
        if stop_session:
            spark.stop()
    summary["summary_file"] = _write_summary(config, job, run_id, summary)
    metrics.push(config, job, run_id, summary)
    print(formatter(summary) if formatter else json.dumps(summary, indent=2, default=str))
    if formatter and summary["summary_file"]:
        print(f"summary file   {summary['summary_file']}")
    return 0 if summary.get("ok", True) else 1
