"""Building a Spark session with Delta outside spark-submit (tests, benchmarks, notebooks), and the Spark
settings every job runs with (``spark-defaults.conf``, beside this module).

Jobs get their session from spark-submit.sh or the platform; this is for code that starts Spark itself and
says where the Delta jars are. The caller stops the session it builds.
"""
from __future__ import annotations

import glob
import logging
import os
import sys
from typing import Optional

log = logging.getLogger(__name__)


def checkout_jars(checkout: str) -> str:
    """The jars folder of the running environment's stack in a checkout (``.jars/<stack>``, as
    scripts/setup.sh fetches them and names the stack in the environment's ``.imgshards-stack``)."""
    try:
        with open(os.path.join(sys.prefix, ".imgshards-stack")) as f:
            stack = f.read().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"{sys.prefix} was not made by scripts/setup.sh (no .imgshards-stack)") from None
    return os.path.join(checkout, ".jars", stack)


def delta_jars(jars_dir: str) -> list:
    """The jars in ``jars_dir`` (Delta's, as scripts/setup.sh fetches them into a checkout's .jars/<stack>/)."""
    jars = sorted(glob.glob(os.path.join(jars_dir, "*.jar")))
    if not jars:
        raise FileNotFoundError(f"no Delta jars in {jars_dir}: run scripts/setup.sh")
    return jars


SPARK_DEFAULTS = os.path.join(os.path.dirname(__file__), "spark-defaults.conf")


_REFUSED_SETTINGS: set = set()  # settings this process's sessions would not take (warned once each)


def set_or_warn(conf, key: str, value: str) -> bool:
    """``conf.set(key, value)`` on a session's settings (``spark.conf``, or a Hadoop configuration); False
    where the platform refuses it (Databricks serverless takes a few settings only), with one warning per
    key: the job runs with the platform's value instead of failing."""
    try:
        conf.set(key, value)
        return True
    except Exception as e:
        if key not in _REFUSED_SETTINGS:
            _REFUSED_SETTINGS.add(key)
            log.warning("this Spark session does not let a job set %s (%s): the platform's value applies",
                        key, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return False


def is_connect(spark) -> bool:
    """True for a Spark Connect session: no SparkContext, no RDDs, no accumulators, no py4j."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def default_parallelism(spark) -> int:
    """The cores Spark schedules tasks on: the SparkContext's default parallelism on a classic session; on a
    Spark Connect session, ``spark.default.parallelism`` where set, else the cores of a ``local[N]`` master,
    else the shuffle partitions."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    master = spark.conf.get("spark.master", None) or ""
    if master.startswith("local"):
        cores = master[len("local["):].split(",")[0].rstrip("]") if "[" in master else "1"
        return (os.cpu_count() or 1) if cores == "*" else int(cores)
    return int(spark.conf.get("spark.sql.shuffle.partitions", "200"))


def application_id(spark) -> str:
    """The Spark application's id, on a classic or a Spark Connect session."""
    return spark.sparkContext.applicationId if not is_connect(spark) else spark.conf.get("spark.app.id")


def spark_defaults() -> dict:
    """The settings of spark-defaults.conf (the ones spark-submit.sh also applies), as a dict."""
    return read_properties(SPARK_DEFAULTS)


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


def build_session(master: str, app_name: str, conf: Optional[dict] = None, *, jars_dir: str):
    """A SparkSession on ``master`` with the Delta jars of ``jars_dir`` (and the S3A connector of its ``s3/``
    folder on the driver's class path), Delta's extensions and the project's Spark defaults, bound to
    loopback; ``conf`` overrides any of them."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", ",".join(delta_jars(jars_dir)))
        # The S3A connector (scripts/setup.sh puts it in .jars/<stack>/s3/), for s3a:// and s3:// URLs.
        .config("spark.driver.extraClassPath", os.path.join(jars_dir, "s3", "*"))
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
        # suite's Spark tests run markedly faster with the first two). The JIT keeps
        # both tiers here: a session that lives through the whole suite pays C2's warm-up once and gains.
        .config("spark.driver.extraJavaOptions", "-XX:+UseParallelGC")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
        .config("spark.databricks.delta.stats.collect", "false")
    )
    for key, value in {**spark_defaults(), **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
