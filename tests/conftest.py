"""Fixtures: one local[2] Spark session with Delta for the whole run, the S3 server, test credentials, and
the Spark-free tier: every test that uses no Spark fixture and starts no Spark is marked ``fast``
(``scripts/test.sh --fast``)."""
from __future__ import annotations

import os
import subprocess

import pytest

from helpers import ROOT, TEST_AWS_CREDENTIALS, OldStack, local_session, moto_server

# Fixtures that start Spark (the session, or a launcher/cluster through the tests' own fixtures) or build an
# environment (old_stack); a test that
# uses none of them and is not marked slow is in the fast tier.
SPARK_FIXTURES = {"old_stack", "spark", "s3_pipeline", "cluster", "packed_environment", "pipeline_run", "exported"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("spark"):
            continue
        if SPARK_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(autouse=True)
def trusted_dali_decoder():
    """Every test starts with DALI's decoder in use: imgshards.preprocess.transform stops using it for the rest of
    a process once it rejected a batch, and tests share one process."""
    from imgshards.preprocess import transform

    transform._DALI_DECODER_FAILED = False
    yield


@pytest.fixture(scope="session", autouse=True)
def aws_test_credentials():
    """Test credentials in the environment before the test JVM starts, since S3A reads them from the
    environment of the process it runs in (autouse: set up before the spark fixture)."""
    saved = {k: os.environ.get(k) for k in TEST_AWS_CREDENTIALS}
    os.environ.update(TEST_AWS_CREDENTIALS)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def old_stack():
    """The spark35 environment with Petastorm's readers, made by the project's set-up (minutes the first time,
    then a second; scripts/test.sh makes it before the suite)."""
    subprocess.run([os.path.join(ROOT, "scripts", "setup.sh"), "--stack", "spark35"], check=True, timeout=3600)
    return OldStack(os.path.join(ROOT, ".venv-spark35"))


@pytest.fixture(scope="session")
def s3_endpoint():
    """The S3 server the object-storage tests share."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    session = local_session("local[2]", "imgshards-tests", {
        # Named tables' schemas (tests of tables.schema) in the session's in-memory catalog, here, not in the
        # directory the tests started from.
        "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("spark-warehouse")),
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "32",
        "spark.databricks.delta.snapshotPartitions": "2",
        # In local mode the executor is this JVM: after 60 failed heartbeats to its own driver (10 minutes of
        # a starved machine while the cluster tests run beside it) it would exit the JVM, and with it every
        # later test's session. A CI run lost its session that way once.
        "spark.executor.heartbeat.maxFailures": "100000",
    })
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
