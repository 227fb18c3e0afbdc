"""The pipeline on a real two-worker standalone cluster, from the packed environment.

A master and two workers on 127.0.0.1, each with its own work directory. ./spark-submit.sh --profile
standalone builds the wheel and the packed runtime environment (scripts/package.sh) and ships it with
--archives; the runtime venv it was packed from is moved away for the whole run, so nothing can come from
it. The doctor job asks from inside tasks which Python each executor runs; the pipeline runs in client and
in cluster deploy mode, and its tables equal those of a local[*] run on the same input.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from imgshards.config import load_config
from imgshards.export.shards import ATTEMPT
from imgshards.jobs.pipeline import run_pipeline
from imgshards.sample import make_sample_dataset
from imgshards.train.loader import read_manifest

from format_readers import every_format
from helpers import LAUNCHER, ROOT, free_port, standalone_cluster

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
    # The versions of the stack, in the JVM and in every Python: the executors' packed environment has the
    # driver's pyspark, delta-spark, pyarrow, numpy and pandas; the JVM runs that Spark with the stack's Delta.
    import pyspark

    assert summary["jvm"]["spark"] == pyspark.__version__
    assert summary["jvm"]["delta"] and summary["jvm"]["delta"].split(".")[0] == pyspark.__version__.split(".")[0]
    assert all(summary["driver"]["stack"].values()), summary["driver"]["stack"]
    for facts in executors:
        assert facts["stack"] == summary["driver"]["stack"]
    assert "Spark " + pyspark.__version__ in result.stdout and "numpy " in result.stdout
    assert not os.path.exists(os.path.join(cluster_dir, "master.pid"))  # stopped after the job
    # Stopped, the cluster keeps each executor's logs and none of its copy of the environment (~600 MB each).
    for facts in executors:
        assert sorted(os.listdir(facts["cwd"])) == ["stderr", "stdout"], facts["cwd"]


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


EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


def executor_pids(cluster_dir: str) -> list:
    """Process ids of the executor JVMs of this cluster (their working directories are under its workers')."""
    pids = subprocess.run(["pgrep", "-f", EXECUTOR_CLASS], capture_output=True, text=True).stdout.split()
    mine = []
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(cluster_dir + os.sep):
                mine.append(int(pid))
        except OSError:
            pass  # gone meanwhile
    return mine


def launch_killing_executors(master: str, cluster_dir: str, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run a job on the cluster in client mode and, the first time its progress lines show each stage with
    tasks still to do, kill one executor JVM with SIGKILL (the worker starts a new one; Spark retries the
    tasks). Returns the result and the stages an executor was killed in."""
    job = subprocess.Popen([LAUNCHER, "--profile", "standalone", "--master", master, *args, "--set",
                            "progress.interval_seconds=1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    output, killed = [], []
    for line in job.stdout:
        output.append(line)
        progress = re.search(r"progress (ingest|preprocess|export): (\d+)/(\d+) tasks", line)
        if progress and progress.group(1) not in killed and int(progress.group(2)) < int(progress.group(3)):
            pids = executor_pids(cluster_dir)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(progress.group(1))
    job.wait(timeout=900)
    result = subprocess.CompletedProcess(job.args, job.returncode, "".join(output), "")
    assert result.returncode == 0, result.stdout[-6000:]
    return result, killed


@pytest.fixture(scope="module")
def cluster_input(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cluster-input") / "sample"
    make_sample_dataset(str(raw))
    return str(raw)


@pytest.fixture(scope="module")
def local_digest(spark, cluster_input, tmp_path_factory):
    """The tables of a local run on the cluster tests' input, with their settings."""
    local = tmp_path_factory.mktemp("cluster-local")
    config = dataclasses.replace(load_config(overrides=["preprocess.size=64"]), input=cluster_input,
                                 warehouse=str(local / "warehouse"), output=str(local / "shards"), workdir=str(local))
    run_pipeline(spark, config, "local-run")
    digest = table_digest(spark, str(local / "warehouse"))
    assert digest["counts"]["processed"] > 200
    return digest


# One test per deploy mode: the cluster pipelines and the local one took 926 s in one test on a slow day here,
# past the suite's 900 s limit, and a timeout interrupts the shared session's py4j mid-call, which fails every
# later test with it. Client mode is the killed-executors run's (a plain client run added 165 s and nothing
# that run does not check).
@pytest.mark.parametrize("deploy_mode", ["cluster", "killed-executors"])
def test_pipeline_on_the_cluster_equals_a_local_run(spark, cluster, cluster_input, local_digest, deploy_mode, tmp_path):
    master, cluster_dir = cluster
    work = tmp_path / deploy_mode
    args = ["pipeline", "--input", cluster_input, "--warehouse", str(work / "warehouse"), "--output", str(work / "shards"),
            "--set", f"workdir={work}", "--set", "preprocess.size=64",
            "--set", "export.formats=[petastorm,mds,webdataset]", "--set", "export.min_shards=8"]
    if deploy_mode == "killed-executors":
        _, killed = launch_killing_executors(master, cluster_dir, *args)
        assert killed == ["ingest", "preprocess", "export"], killed
    else:
        launch(master, *args, deploy_mode=deploy_mode)
    summary = summary_of(work, "pipeline")
    print(f"pipeline seconds on the cluster ({deploy_mode}):", json.dumps(summary["seconds"]))
    assert summary["ingest"]["seen"] == summary["ingest"]["ingested"] + summary["ingest"]["duplicates"] \
        + summary["ingest"]["quarantined"] + summary["ingest"]["skipped_hidden"] + summary["ingest"]["skipped_non_image"]
    digest = table_digest(spark, str(work / "warehouse"))
    assert digest["counts"] == local_digest["counts"]
    assert digest["images"] == local_digest["images"]
    assert digest["processed"] == local_digest["processed"]
    # Every format whole, whichever of its tasks an executor was lost in, and no attempt's leftovers.
    for split, info in read_manifest(str(work / "shards"))["splits"].items():
        readers = every_format(info, str(tmp_path / "cache" / split))
        expected = readers.pop("petastorm")
        assert len(expected) == info["rows"] and all(r == expected for r in readers.values()), split
    assert not glob.glob(str(work / "shards" / "**" / f"*{ATTEMPT}*"), recursive=True)
