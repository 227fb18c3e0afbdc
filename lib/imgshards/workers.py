"""Starting the executors' Python workers ahead of a job's first pandas UDF.

A stage that knows it has work calls :func:`start_once` before the driver's own work (listing, opening
tables), so the workers start and import pandas, Pillow and the package meanwhile: the ingest pass's first
tasks took 2.4 s instead of 5.1 here. Only then: a run with nothing to do (a re-run that finds its stored
state, see imgshards.run_state) starts no worker at all, where the start would take the two cores from
the driver (the quick start's re-run: 11 s with it, 8-9 s without).
"""
from __future__ import annotations

import importlib
import logging
import threading

from imgshards import progress

log = logging.getLogger(__name__)

_started: set = set()  # application ids whose workers were started


def _import_worker_modules(batches):
    """mapInPandas body run in each Python worker: import what the jobs' pandas UDFs use (pandas, pyarrow,
    Pillow, imgshards); returns the batches as they are."""
    for name in ("imgshards.ingest", "imgshards.transform"):
        importlib.import_module(name)
    yield from batches


def start(spark) -> threading.Thread:
    """Start the Python workers and their imports, one task per core, in a background job (stage
    ``start``, job group progress.BACKGROUND_GROUP: no stage's progress). Workers are reused
    (spark.python.worker.reuse), so the first pandas UDF finds them ready instead of waiting 1-1.5 s for
    each to start and import; a failure here is left for the job's own first task to report."""
    sc = spark.sparkContext

    def run() -> None:
        sc.setLocalProperty(progress.STAGE_PROPERTY, "start")  # this thread's jobs (scripts/profile_run.py)
        sc.setJobGroup(progress.BACKGROUND_GROUP, "start Python workers")
        try:
            # A SQL pandas UDF, not an RDD function: Spark keeps those workers apart (other environment).
            spark.range(0, sc.defaultParallelism, numPartitions=sc.defaultParallelism).mapInPandas(
                _import_worker_modules, "id long").collect()
        except Exception as e:  # noqa: BLE001
            log.debug("starting the Python workers early failed: %s", e)

    thread = threading.Thread(target=run, name="start-python-workers", daemon=True)
    thread.start()
    return thread


def start_once(spark) -> None:
    """:func:`start`, unless it already ran for this Spark application (the workers stay up)."""
    app = spark.sparkContext.applicationId
    if app not in _started:
        _started.add(app)
        start(spark)
