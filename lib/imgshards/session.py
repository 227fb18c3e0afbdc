"""Building a Spark session with Delta outside spark-submit (tests, benchmarks, notebooks).

Jobs get their session from spark-submit.sh; this is for code that starts Spark itself. The caller
stops the session it builds.
"""
from __future__ import annotations

import glob
import os
import sys
from typing import Optional

PROJECT_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def delta_jars(jars_dir: Optional[str] = None) -> list:
    jars_dir = jars_dir or os.path.join(PROJECT_ROOT, ".jars")
    jars = sorted(glob.glob(os.path.join(jars_dir, "*.jar")))
    if not jars:
        raise FileNotFoundError(f"no Delta jars in {jars_dir}: run scripts/setup.sh")
    return jars


def build_session(master: str = "local[2]", app_name: str = "imgshards", conf: Optional[dict] = None):
    """A SparkSession on ``master`` with the Delta jars and extensions, bound to loopback."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", ",".join(delta_jars()))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        # See conf/spark/local.conf: few, byte-sized partitions; each Python task has a fixed cost.
        .config("spark.sql.files.maxPartitionBytes", "128m")
        .config("spark.sql.files.openCostInBytes", "256k")
        .config("spark.hadoop.parquet.enable.dictionary", "false")
        .config("spark.sql.parquet.columnarReaderBatchSize", "64")
        .config("spark.driver.memory", "4g")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
