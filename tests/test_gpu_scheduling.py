"""GPU scheduling without a GPU: a real standalone master and worker on 127.0.0.1 whose discovery script
advertises two fake GPUs; preprocess runs there through ./spark-submit.sh --profile gpu with backend auto.
Every task must receive a GPU address, every row must record it, and with no CUDA the job must fall back
to dali-cpu and say so."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess

import pytest

from imgshards.config import load_config
from imgshards.ingest.run import run_ingest
from imgshards.sample import make_sample_dataset

from helpers import LAUNCHER, ROOT, standalone_cluster

pytest.importorskip("nvidia.dali")


@pytest.fixture
def fake_gpu_cluster(tmp_path):
    with standalone_cluster(tmp_path / "cluster", workers=1, fake_gpus=2) as master:
        yield master


@pytest.mark.slow
def test_each_task_gets_a_gpu_and_auto_falls_back_to_dali_cpu(spark, tmp_path, fake_gpu_cluster):
    manifest = make_sample_dataset(str(tmp_path / "raw"), per_class=12, seed=5)
    config = dataclasses.replace(load_config(overrides=["preprocess.size=32"]),
                                 warehouse=str(tmp_path / "warehouse"), workdir=str(tmp_path))
    run_ingest(spark, config, str(tmp_path / "raw"), "g1")

    extra = " ".join([
        "--conf spark.executor.cores=2",
        "--conf spark.executor.memory=1g",
        "--conf spark.executor.resource.gpu.amount=2",
        "--conf spark.task.resource.gpu.amount=1",
        f"--conf spark.executor.resource.gpu.discoveryScript={ROOT}/scripts/fakeGpusResources.sh",
    ])
    result = subprocess.run(
        [LAUNCHER, "--profile", "gpu", "--master", fake_gpu_cluster, "preprocess", "--warehouse", config.warehouse,
         "--set", f"workdir={tmp_path}", "--set", "preprocess.size=32", "--set", "preprocess.backend=auto"],
        env={**os.environ, "SPARK_SUBMIT_OPTS_EXTRA": extra}, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{\n"):])
    summary = summary["preprocess"]
    assert summary["processed"] == manifest.images
    assert "falling back" in result.stdout or "ran dali-cpu" in summary["gpu_fallback"]

    rows = spark.read.format("delta").load(config.table("processed").path).select(
        "backend", "device", "task_gpu").collect()
    assert len(rows) == manifest.images
    gpus = {r["task_gpu"] for r in rows}
    assert None not in gpus and gpus <= {"0", "1"}  # every task got an address from the worker's two
    assert all(r["device"] == "cpu" for r in rows)  # no CUDA here: the backend chose the CPU, and says so
    assert {r["backend"] for r in rows} == {"dali-cpu", "pil"}
    assert re.search(r"tasks were given GPUs [01](,[01])?", summary["gpu_fallback"])
    assert sum(summary["task_gpus"].values()) == manifest.images
