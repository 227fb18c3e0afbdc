"""Starting the executors' Python workers ahead of a job's first pandas UDF.

A stage that knows it has work calls :func:`start_once` before the driver's own work (listing, opening
tables), so the workers start and import pandas, Pillow and the package meanwhile: the ingest pass's first
tasks then take about half as long. Only then: a run with nothing to do (a re-run that finds its stored
state, see imgshards.delta.run_state) starts no worker at all, where the start would take the two cores from
the driver and make the quick start's re-run slower.
"""
from __future__ import annotations

import importlib

from imgshards.runtime.background import Background
from imgshards.session import application_id, default_parallelism

_started: set = set()  # application ids whose workers were started


def _import_worker_modules(batches):
    """mapInPandas body run in each Python worker: import what the jobs' pandas UDFs use (pandas, pyarrow,
    Pillow, imgshards); returns the batches as they are."""
    for name in ("imgshards.ingest.read", "imgshards.preprocess.transform"):  # the UDF bodies
        importlib.import_module(name)
    yield from batches


def _start_workers(spark) -> None:
    parallelism = default_parallelism(spark)
    # A SQL pandas UDF, not an RDD function: Spark keeps those workers apart (other environment).
    spark.range(0, parallelism, numPartitions=parallelism).mapInPandas(_import_worker_modules, "id long").collect()


def start(spark) -> Background:
    """Start the Python workers and their imports, one task per core, in a background job (stage
    ``start``, job group progress.BACKGROUND_GROUP: no stage's progress). Workers are reused
    (spark.python.worker.reuse), so the first pandas UDF finds them ready instead of waiting for
    each to start and import; a failure here is left for the job's own first task to report."""
    return Background("start", _start_workers, spark)


def start_once(spark) -> None:
    """:func:`start`, unless it already ran for this Spark application (the workers stay up)."""
    app = application_id(spark)
    if app not in _started:
        _started.add(app)
        start(spark)
