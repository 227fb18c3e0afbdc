"""Shared fixtures: one local[2] Spark session with Delta for the whole run, and paths to ../shared data."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(ROOT), "shared", "datasets")


def shared_dataset(name: str) -> str:
    """Path of a ../shared dataset, or skip the test with the reason."""
    path = os.path.join(SHARED_DATASETS, name)
    if not os.path.isdir(path):
        pytest.skip(f"../shared/datasets/{name} is not present (it is beside the project in CI)")
    return path


@pytest.fixture(autouse=True)
def trusted_dali_decoder():
    """Every test starts with DALI's decoder in use: imgshards.transform stops using it for the rest of
    a process once it rejected a batch, and tests share one process."""
    from imgshards import transform

    transform._DALI_DECODER_FAILED = False
    yield


@pytest.fixture(scope="session")
def spark():
    from imgshards.session import build_session

    session = build_session("local[2]", "imgshards-tests", {
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "32",
        "spark.databricks.delta.snapshotPartitions": "2",
    })
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def standalone_cluster(cluster_dir, workers: int = 2, fake_gpus: int = 0):
    """A real standalone master and ``workers`` workers on 127.0.0.1 (scripts/local_cluster.sh), each
    worker with its own work directory under ``cluster_dir``; yields the master URL and stops them."""
    port = free_port()
    env = {**os.environ, "SPARK_MASTER_PORT": str(port), "CLUSTER_DIR": str(cluster_dir)}
    script = os.path.join(ROOT, "scripts", "local_cluster.sh")
    args = [script, "start", "--workers", str(workers)] + (["--fake-gpus", str(fake_gpus)] if fake_gpus else [])
    subprocess.run(args, env=env, check=True, timeout=180)
    try:
        yield f"spark://127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop"], env=env, check=False, timeout=60)
