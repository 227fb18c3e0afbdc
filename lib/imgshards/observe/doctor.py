"""What Python the driver and each executor run, asked from inside Spark tasks.

On a cluster the executors must run the packed environment (``--archives ...#environment``), not whatever
Python a node happens to have: :func:`executor_environments` runs tasks until every executor has answered
and reports, per executor, its interpreter, ``sys.prefix``, where ``imgshards`` was imported from and the
versions of the packages the jobs need; :func:`jvm_versions` adds the Spark and Delta the JVM runs.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import socket
import sys
import time

from pyspark.sql import SparkSession

# Imported by the jobs on executors (DALI only for the DALI backends and augmentation).
REQUIRED_MODULES = ("imgshards", "numpy", "pandas", "pyarrow", "PIL", "cv2", "simplejpeg", "yaml")
OPTIONAL_MODULES = ("nvidia.dali",)
# The stack a run depends on (docs/clusters.md): (distribution, module that has its version where the
# platform put the package on the path without its metadata, as clusters do with pyspark).
STACK = (("pyspark", "pyspark"), ("delta-spark", None), ("pyarrow", "pyarrow"), ("numpy", "numpy"),
         ("pandas", "pandas"))


def stack_versions() -> dict:
    """The version of each :data:`STACK` package in this process (None: not installed)."""
    versions = {}
    for distribution, module in STACK:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            try:
                versions[distribution] = importlib.import_module(module).__version__ if module else None
            except ImportError:
                versions[distribution] = None
    return versions


def jvm_versions(spark: SparkSession) -> dict:
    """The Spark and Delta versions the driver's JVM runs (Delta's from its ``io.delta.VERSION``; None where
    the session gives no way into the JVM, or the platform ships Delta under other names)."""
    delta = None
    try:
        delta = str(getattr(getattr(spark.sparkContext._jvm.io.delta, "package$"), "MODULE$").VERSION())
    except Exception:  # a Spark Connect session, or no open-source Delta on the class path
        pass
    return {"spark": spark.version, "delta": delta}


def describe_python() -> dict:
    """This process's Python: interpreter, prefix, working directory, and each module's version and file
    (``None`` for a module that does not import)."""
    modules = {}
    for name in REQUIRED_MODULES + OPTIONAL_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:
            modules[name] = None
            continue
        modules[name] = {"version": str(getattr(module, "__version__", "")), "file": getattr(module, "__file__", None)}
    cwd = os.getcwd()
    environment = os.path.join(cwd, "environment")
    return {
        "host": socket.gethostname(),
        "cwd": cwd,
        "executable": sys.executable,
        "prefix": sys.prefix,
        "python": ".".join(map(str, sys.version_info[:3])),
        # True where this process runs the archive Spark unpacked into its working directory.
        "packed_environment": os.path.realpath(sys.prefix) == os.path.realpath(environment),
        "modules": modules,
        "stack": stack_versions(),
        "missing": [name for name in REQUIRED_MODULES if modules[name] is None],
    }


def _registered_executors(spark: SparkSession) -> int:
    # Block managers of the executors plus the driver's own.
    return spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1


def _probe(batches):
    """mapInPandas body: one row with this Python's :func:`describe_python` as JSON."""
    import json

    import pandas as pd

    time.sleep(0.2)  # long enough that every executor's cores take tasks
    for _ in batches:
        pass
    yield pd.DataFrame({"facts": [json.dumps(describe_python())]})


def executor_environments(spark: SparkSession, min_executors: int = 1, timeout_s: float = 120.0) -> list:
    """One :func:`describe_python` per executor (keyed by its working directory), after waiting up to
    ``timeout_s`` for ``min_executors`` executors; raises TimeoutError if they do not come. Asked by a SQL
    pandas function, as the jobs' own code runs, so a Spark Connect session answers too (there, without
    the executors' registry, by asking again until enough have answered)."""
    import json

    from imgshards.session import default_parallelism, is_connect

    deadline = time.monotonic() + timeout_s
    connect = is_connect(spark)
    while not connect and _registered_executors(spark) < min_executors:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {_registered_executors(spark)} of {min_executors} executors registered "
                               f"within {timeout_s:g} s")
        time.sleep(0.5)
    tasks = max(4 * default_parallelism(spark), 2 * min_executors)
    by_executor: dict = {}
    while True:
        rows = spark.range(0, tasks, numPartitions=tasks).mapInPandas(_probe, "facts string").collect()
        for row in rows:
            facts = json.loads(row["facts"])
            by_executor.setdefault(facts["cwd"], facts)
        if len(by_executor) >= min_executors or not connect:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(by_executor)} of {min_executors} executors answered within {timeout_s:g} s")
        time.sleep(1)
    return [by_executor[key] for key in sorted(by_executor)]
