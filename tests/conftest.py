"""Shared fixtures: one local[2] Spark session with Delta for the whole run, and paths to ../shared data."""
from __future__ import annotations

import os

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
