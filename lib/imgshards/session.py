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


SPARK_DEFAULTS = os.path.join(os.path.dirname(__file__), "spark-defaults.conf")


def spark_defaults() -> dict:
    """The settings of spark-defaults.conf (the ones spark-submit.sh also applies), as a dict."""
    return read_properties(SPARK_DEFAULTS)


def profile_settings(profile: str) -> dict:
    """The settings of conf/spark/<profile>.conf (those spark-submit.sh applies over the defaults)."""
    return read_properties(os.path.join(PROJECT_ROOT, "conf", "spark", profile + ".conf"))


def read_properties(path: str) -> dict:
    """A Spark properties file (``key value`` lines, ``#`` comments) as a dict."""
    settings = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, value = line.split(None, 1)
                settings[key] = value
    return settings


def build_session(master: str = "local[2]", app_name: str = "imgshards", conf: Optional[dict] = None):
    """A SparkSession on ``master`` with the Delta jars and extensions and the project's Spark defaults,
    bound to loopback; ``conf`` overrides any of them."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", ",".join(delta_jars()))
        # The S3A connector of scripts/setup.sh (.jars/s3/), for s3a:// and s3:// URLs.
        .config("spark.driver.extraClassPath", os.path.join(PROJECT_ROOT, ".jars", "s3", "*"))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "4g")
        # As conf/spark/local.conf: Delta's 50 state-reconstruction tasks per snapshot are for clusters.
        .config("spark.databricks.delta.snapshotPartitions", "2")
        # As conf/spark/local.conf: the parallel collector, no generated code, no Delta file statistics (the
        # suite's tests/test_ingest.py took 192-202 s with the first two, 251-293 s without). The JIT keeps
        # both tiers here: a session that lives through the whole suite pays C2's warm-up once and gains.
        .config("spark.driver.extraJavaOptions", "-XX:+UseParallelGC")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
        .config("spark.databricks.delta.stats.collect", "false")
    )
    for key, value in {**spark_defaults(), **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
