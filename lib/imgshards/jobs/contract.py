"""The job contract: what every job declares once (:class:`Job`) and what every job does the same way.

A job module (``imgshards.jobs.<name>``) defines ``JOB = Job(...)``: its name, its help text, its own
arguments, the config locations it reads or writes (checked at start), whether its Python workers start with
the session, and ``run(spark, config, args, run_id) -> dict``. ``Job.main`` does the rest so every job behaves
the same: a bad setting exits 2 before Spark starts, a run summary is printed as JSON (or by the job's
formatter) on stdout and written under ``<workdir>/runs/``, metrics are pushed. The launchers read the same
object: ``spark-submit.sh`` runs ``jobs/<name>.py`` (``JOB.main``), the wheel's console scripts
``imgshards-<name>`` run ``JOB.platform_main`` in a session the platform owns, and the deploy generator
(``imgshards.deploy``) checks every generated invocation against ``JOB.parser()``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Callable, Optional, Sequence

from imgshards.config import ConfigError, PipelineConfig, load_config, resolve_local
from imgshards.delta import tables
from imgshards.delta.tables import TableVersionError
from imgshards.io import storage
from imgshards.observe import metrics, progress
from imgshards.runtime import environment, workers
from imgshards.schemas import TABLES

log = logging.getLogger(__name__)

EXIT_BAD_CONFIG = 2
LOCATIONS = ("input", "warehouse", "output")

RunFunction = Callable[..., dict]


@dataclasses.dataclass(frozen=True)
class Job:
    """One job, declared once.

    ``locations``: the config keys (of :data:`LOCATIONS`) the job reads or writes; each object-store one is
    checked at start, and a job that names ``warehouse`` reports the tables' Delta versions.
    ``workers_at_start``: start the executors' Python workers with the session, for jobs whose pandas UDFs
    run whatever they find (export, report); ingest and preprocess start them once they know they have work
    (``runtime.workers.start_once``). ``add_arguments(parser)`` adds the job's own options;
    ``formatter(summary)`` prints the summary for people instead of JSON.
    """

    name: str
    description: str
    run: RunFunction
    locations: tuple = ()
    workers_at_start: bool = False
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None
    formatter: Optional[Callable[[dict], str]] = None

    def __post_init__(self) -> None:
        unknown = set(self.locations) - set(LOCATIONS)
        if unknown:
            raise ValueError(f"job {self.name}: unknown locations {sorted(unknown)}; known: {LOCATIONS}")

    def parser(self) -> argparse.ArgumentParser:
        """The job's argument parser: the common options, then its own."""
        parser = base_parser(self.description)
        if self.add_arguments is not None:
            self.add_arguments(parser)
        return parser

    def main(self, argv: Optional[Sequence[str]] = None, stop_session: bool = True) -> int:
        """Run the job with ``argv`` (default: the command line); returns the exit code."""
        return run_job(self, argv, stop_session)

    def platform_main(self) -> int:
        """The wheel's console script: run in the platform's Spark session and leave it running, since the
        platform, not the job, created it (Databricks ``python_wheel_task``)."""
        return run_job(self, None, stop_session=False)


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


# A run id names files and folders (the export's v-<run_id>, run summaries, Pushgateway groups): letters,
# digits, '.', '_' and '-', starting with a letter or digit, so that it never leaves the folder it names.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ConfigError(f"--run-id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                          f"(and no '..'), got {run_id!r}")
    return run_id


def base_parser(description: str) -> argparse.ArgumentParser:
    # No abbreviated options: a definition saying --warehous must fail, not quietly mean --warehouse.
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--conf-file",
                        help="pipeline config YAML (default: the package's pipeline.yaml, linked as conf/pipeline.yaml)")
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


def prepare_storage(spark, config: PipelineConfig, locations: Sequence[str]) -> None:
    """Point S3A at the configured endpoint, then check that every object-store location of ``locations``
    (config keys: input, warehouse, output) can be reached, so a wrong endpoint, bucket or credential fails at
    start naming the URL and the cause."""
    unknown = set([locations] if isinstance(locations, str) else locations) - set(LOCATIONS)
    if unknown:  # a job name passed by mistake would otherwise be checked letter by letter
        raise ValueError(f"unknown locations {sorted(unknown)}; known: {LOCATIONS}")
    storage.configure_hadoop(spark, config)
    for name in locations:
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


def _push_failure(config: PipelineConfig, job: str, run_id: str, error: BaseException) -> None:
    """Push the failed run's group (``imgshards_run_ok`` 0) to the Pushgateway, if one is set."""
    metrics.push(config, job, run_id, {"job": job, "run_id": run_id, "ok": False, "error": type(error).__name__})


def run_job(job: Job, argv: Optional[Sequence[str]] = None, stop_session: bool = True) -> int:
    """Parse ``argv``, validate the config, run ``job.run(spark, config, args, run_id)`` and print its summary.

    ``stop_session``: stop the Spark session at the end; False where the platform owns the session.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = job.parser().parse_args(argv)
    try:
        config = config_from_args(args)
        run_id = check_run_id(args.run_id) if args.run_id is not None else new_run_id()
    except ConfigError as e:
        print(f"{job.name}: configuration error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    log.info("%s run %s with config %s", job.name, run_id, json.dumps(config.to_dict(), default=list))
    spark = get_spark(f"imgshards-{job.name}")
    try:
        if config.connect.environment:
            environment.ship(spark, config.connect.environment)
        if job.workers_at_start:
            workers.start_once(spark)
        started = time.monotonic()
        with progress.stage(job.name):
            prepare_storage(spark, config, job.locations)
            with progress.track(spark, config.progress.interval_seconds, job.name):
                summary = {"job": job.name, "run_id": run_id, **job.run(spark, config, args, run_id)}
        summary.setdefault("seconds", {})[job.name] = round(time.monotonic() - started, 3)
        if "warehouse" in job.locations:
            summary["delta_versions"] = {t: tables.log_version(spark, config.table(t)) for t in TABLES}
    except (ConfigError, FileNotFoundError, TableVersionError, storage.StorageError) as e:
        # Bad settings or inputs found once Spark is up (missing input path, unknown version): no traceback.
        print(f"{job.name}: error: {e}", file=sys.stderr)
        _push_failure(config, job.name, run_id, e)
        return EXIT_BAD_CONFIG
    except BaseException as e:
        _push_failure(config, job.name, run_id, e)  # (dashboards see imgshards_run_ok 0, not silence)
        raise
    finally:
        if stop_session:
            spark.stop()
    summary["summary_file"] = _write_summary(config, job.name, run_id, summary)
    metrics.push(config, job.name, run_id, summary)
    print(job.formatter(summary) if job.formatter else json.dumps(summary, indent=2, default=str))
    if job.formatter and summary["summary_file"]:
        print(f"summary file   {summary['summary_file']}")
    return 0 if summary.get("ok", True) else 1
