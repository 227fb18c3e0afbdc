"""Shared fixtures: one local[2] Spark session with Delta for the whole run, and paths to ../shared data."""
from __future__ import annotations

import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(ROOT), "shared", "datasets")


def shared_dataset(name: str) -> str:
    """Path of a ../shared dataset, or skip the test with the reason."""
    path = os.path.join(SHARED_DATASETS, name)
    if not os.path.isdir(path):
        pytest.skip(f"../shared/datasets/{name} is not present (it is beside the project in CI)")
    return path


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    jars = sorted(glob.glob(os.path.join(ROOT, ".jars", "*.jar")))
    if not jars:
        pytest.fail("Delta jars missing in .jars/: run scripts/setup.sh (scripts/test.sh does)")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    session = (
        SparkSession.builder.master("local[2]")
        .appName("imgshards-tests")
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "32")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
