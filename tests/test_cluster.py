"""The pipeline on a real two-worker standalone cluster, from the packed environment.

A master and two workers on 127.0.0.1, each with its own work directory. ./spark-submit.sh --profile
standalone builds the wheel and the packed runtime environment (scripts/package.sh) and ships it with
--archives; the runtime venv it was packed from is moved away for the whole run, so nothing can come from
it. The doctor job asks from inside tasks which Python each executor runs; the pipeline runs in client and
in cluster deploy mode, and its tables equal those of a local[*] run on the same input.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, free_port, standalone_cluster
from imgshards.config import load_config
from imgshards.pipeline import run_pipeline
from imgshards.sample import make_sample_dataset

LAUNCHER = os.path.join(ROOT, "spark-submit.sh")
PACKAGE = os.path.join(ROOT, "scripts", "package.sh")
RUNTIME_VENV = os.path.join(ROOT, ".work", "package", "env-cpu")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packed_environment():
    archive = subprocess.run([PACKAGE], check=True, capture_output=True, text=True, timeout=900).stdout.strip()
    assert archive.endswith("dist/imgshards-env.tar.gz") and os.path.getsize(archive) > 0
    # The negative control: the venv the archive was packed from is gone while the jobs run.
    hidden = RUNTIME_VENV + ".moved-away"
    shutil.rmtree(hidden, ignore_errors=True)
    os.rename(RUNTIME_VENV, hidden)
    try:
        yield archive
    finally:
        os.rename(hidden, RUNTIME_VENV)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, packed_environment):
    cluster_dir = tmp_path_factory.mktemp("cluster")
    with standalone_cluster(cluster_dir, workers=2) as master:
        yield master, str(cluster_dir)


def launch(master: str, job: str, *args: str, deploy_mode: str = "client") -> subprocess.CompletedProcess:
    result = subprocess.run(
        [LAUNCHER, "--profile", "standalone", "--master", master, "--deploy-mode", deploy_mode, job, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def summary_of(workdir, job: str) -> dict:
    runs = os.path.join(workdir, "runs")
    [name] = [n for n in os.listdir(runs) if n.endswith(f"-{job}.json")]
    with open(os.path.join(runs, name)) as f:
        return json.load(f)


def assert_runs_packed_environment(facts: dict, under: str) -> None:
    environment = os.path.join(facts["cwd"], "environment")
    assert facts["cwd"].startswith(under + os.sep), facts
    assert facts["prefix"] == environment and facts["packed_environment"], facts
    assert facts["modules"]["imgshards"]["file"].startswith(os.path.join(environment, "lib")), facts
    assert facts["missing"] == [], facts


def test_executors_run_the_packed_environment(packed_environment, tmp_path):
    # The documented one command: a fresh two-worker cluster for one job, stopped after it.
    cluster_dir = str(tmp_path / "cluster")
    env = {**os.environ, "SPARK_MASTER_PORT": str(free_port()), "CLUSTER_DIR": cluster_dir}
    result = subprocess.run([os.path.join(ROOT, "scripts", "local_cluster.sh"), "run", "doctor", "--min-executors", "2",
                             "--set", f"workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "(packed environment)" in result.stdout
    summary = summary_of(tmp_path, "doctor")
    executors = summary["executors"]
    assert len(executors) == 2
    workers = {os.path.relpath(e["cwd"], cluster_dir).split(os.sep)[0] for e in executors}
    assert workers == {"worker-1", "worker-2"}  # one executor in each worker's own work directory
    for facts in executors:
        assert_runs_packed_environment(facts, cluster_dir)
    # Client mode: the driver runs here, in the project environment.
    assert summary["driver"]["prefix"] == os.path.join(ROOT, ".venv")
    assert not os.path.exists(os.path.join(cluster_dir, "master.pid"))  # stopped after the job


def test_cluster_deploy_mode_runs_the_driver_on_a_worker(cluster, tmp_path):
    master, cluster_dir = cluster
    launch(master, "doctor", "--min-executors", "2", "--set", f"workdir={tmp_path}", deploy_mode="cluster")
    summary = summary_of(tmp_path, "doctor")
    driver = summary["driver"]
    assert os.path.basename(driver["cwd"]).startswith("driver-")
    assert_runs_packed_environment(driver, cluster_dir)
    assert len(summary["executors"]) == 2
    for facts in summary["executors"]:
        assert_runs_packed_environment(facts, cluster_dir)


def table_digest(spark, warehouse: str) -> dict:
    """Row counts of every table and, for processed, the output bytes per (sha256, copy)."""
    read = lambda name: spark.read.format("delta").load(os.path.join(warehouse, name))  # noqa: E731
    processed = {(r["sha256"], r["copy"]): bytes(r["image"])
                 for r in read("processed").select("sha256", "copy", "image").collect()}
    return {
        "counts": {name: read(name).count() for name in ("images", "quarantine", "duplicates", "processed")},
        "images": sorted((r["path"].rsplit("/sample/", 1)[1], r["sha256"], r["split"], r["label"])
                         for r in read("images").select("path", "sha256", "split", "label").collect()),
        "processed": processed,
    }


def test_pipeline_on_the_cluster_equals_a_local_run(spark, cluster, tmp_path):
    master, _ = cluster
    make_sample_dataset(str(tmp_path / "sample"))
    raw = str(tmp_path / "sample")

    digests = {}
    for deploy_mode in ("client", "cluster"):
        work = tmp_path / deploy_mode
        launch(master, "pipeline", "--input", raw, "--warehouse", str(work / "warehouse"), "--output",
               str(work / "shards"), "--set", f"workdir={work}", "--set", "preprocess.size=64",
               deploy_mode=deploy_mode)
        summary = summary_of(work, "pipeline")
        assert summary["ingest"]["seen"] == summary["ingest"]["ingested"] + summary["ingest"]["duplicates"] \
            + summary["ingest"]["quarantined"] + summary["ingest"]["skipped_hidden"] + summary["ingest"]["skipped_non_image"]
        digests[deploy_mode] = table_digest(spark, str(work / "warehouse"))

    local = tmp_path / "local"
    config = dataclasses.replace(load_config(overrides=["preprocess.size=64"]), input=raw,
                                 warehouse=str(local / "warehouse"), output=str(local / "shards"), workdir=str(local))
    run_pipeline(spark, config, "local-run")
    expected = table_digest(spark, str(local / "warehouse"))

    assert expected["counts"]["processed"] > 200
    for deploy_mode, digest in digests.items():
        assert digest["counts"] == expected["counts"], deploy_mode
        assert digest["images"] == expected["images"], deploy_mode
        assert digest["processed"] == expected["processed"], deploy_mode
