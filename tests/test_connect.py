"""Every job on a Spark Connect session (no SparkContext, no py4j), against a real Spark Connect server the
test starts (scripts/connect_server.sh): the whole pipeline gives the same tables, export and summary as a
classic run on the same input; a re-run finds nothing new; history and export at an older version work; and
the client process never starts a JVM."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from imgshards.config import load_config
from imgshards.delta import tables
from imgshards.jobs.pipeline import run_pipeline
from imgshards.sample import make_sample_dataset

from helpers import connect_server, loader_samples

pytestmark = pytest.mark.slow

# Runs a job's console entry point (the session the platform gives: here SPARK_REMOTE's) and then checks that
# this process never had a SparkContext or a JVM gateway.
_CLIENT = """
import sys
from pyspark import SparkContext
from imgshards.jobs import get_job
job = get_job(sys.argv[1])
sys.argv = ["imgshards-" + job.name] + sys.argv[2:]
rc = job.platform_main()
assert SparkContext._gateway is None and SparkContext._active_spark_context is None, "a JVM was started"
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def metastore(tmp_path_factory):
    return tmp_path_factory.mktemp("metastore")


@pytest.fixture(scope="module")
def remote(tmp_path_factory, metastore):
    """The server, with a Hive metastore on embedded Derby (for the tests of tables by name)."""
    with connect_server(str(tmp_path_factory.mktemp("connect") / "server.log"), str(metastore)) as url:
        yield url


def run_on_connect(remote: str, job: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _CLIENT, job, *args], capture_output=True, text=True,
                            timeout=900, env={**os.environ, "SPARK_REMOTE": remote})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    # The summary file as the job's console names it (the pipeline's table, or the JSON of the others).
    summary_file = re.findall(r'summary[ _]file"?:?\s+"?([^"\s]+)', result.stdout)
    with open(summary_file[-1]) as f:
        return json.load(f)


def rows(spark, table, columns: list) -> list:
    return sorted(tuple(r) for r in tables.table_frame(spark, table).select(*columns).collect())


TABLE_COLUMNS = (("images", ["sha256", "label", "split", "width", "height", "near_dup_cluster"]),
                 ("quarantine", ["reason", "stage"]), ("duplicates", ["sha256"]),
                 ("processed", ["sha256", "copy", "split", "label"]))


def test_the_pipeline_on_spark_connect_equals_a_classic_run(spark, remote, tmp_path):
    make_sample_dataset(str(tmp_path / "raw"), per_class=16, seed=11)
    base = load_config(overrides=["preprocess.size=48", "export.files_per_split=2"])
    runs = {}
    for kind in ("classic", "connect"):
        config = dataclasses.replace(base, input=str(tmp_path / "raw"), warehouse=str(tmp_path / kind / "warehouse"),
                                     output=str(tmp_path / kind / "shards"), workdir=str(tmp_path / kind))
        if kind == "classic":
            summary = run_pipeline(spark, config, "classic")
        else:
            summary = run_on_connect(remote, "pipeline", "--input", config.input, "--warehouse", config.warehouse,
                                     "--output", config.output, "--set", "preprocess.size=48",
                                     "--set", "export.files_per_split=2", "--set", f"workdir={config.workdir}")
        runs[kind] = (config, summary)
    (classic, first), (connect, second) = runs["classic"], runs["connect"]
    for stage, keys in (("ingest", ("seen", "ingested", "duplicates", "quarantined", "skipped_hidden", "skipped_non_image")),
                        ("preprocess", ("processed", "quarantined")), ("export", ("rows", "classes"))):
        assert {k: first[stage][k] for k in keys} == {k: second[stage][k] for k in keys}, stage
    assert second["ingest"]["ingested"] > 0 and second["export"]["rows"]["train"] > 0
    for table, columns in TABLE_COLUMNS:
        assert rows(spark, classic.table(table), columns) == rows(spark, connect.table(table), columns), table
    assert loader_samples(classic.output) == loader_samples(connect.output)

    # A re-run finds its stored state and adds nothing; history and an export of an older version work.
    again = run_on_connect(remote, "pipeline", "--input", connect.input, "--warehouse", connect.warehouse,
                           "--output", connect.output, "--set", "preprocess.size=48",
                           "--set", "export.files_per_split=2", "--set", f"workdir={connect.workdir}")
    assert again["ingest"]["ingested"] == 0 and again["preprocess"]["processed"] == 0
    history = run_on_connect(remote, "history", "--warehouse", connect.warehouse, "--set", f"workdir={connect.workdir}")
    assert history["tables"]["images"][0]["job"] == "ingest"
    older = run_on_connect(remote, "export", "--warehouse", connect.warehouse, "--output", str(tmp_path / "older"),
                           "--as-of-version", "1", "--set", "preprocess.size=48", "--set", "export.files_per_split=2",
                           "--set", f"workdir={connect.workdir}")
    assert older["export"]["source_version"] == 1 and older["export"]["rows"] == second["export"]["rows"]


def test_tables_by_name_in_a_metastore(spark, remote, metastore, tmp_path):
    """tables.schema: managed tables in the Connect server's Hive metastore (Derby), and external tables
    named in this classic session's catalog; both runs make the same tables and export, and a re-run (classic),
    history, an export at an older version and the report (Connect) work by name."""
    make_sample_dataset(str(tmp_path / "raw"), per_class=16, seed=11)
    settings = ["preprocess.size=48", "export.files_per_split=2"]
    classic = dataclasses.replace(
        load_config(overrides=settings + ["tables.schema=imgshards_classic", "tables.external=true"]),
        input=str(tmp_path / "raw"), warehouse=str(tmp_path / "classic" / "warehouse"),
        output=str(tmp_path / "classic" / "shards"), workdir=str(tmp_path / "classic"))
    first = run_pipeline(spark, classic, "classic-named")
    assert first["tables"]["images"] == "`imgshards_classic`.`images`"
    assert spark.catalog.tableExists("imgshards_classic.images")
    assert os.path.isdir(tmp_path / "classic" / "warehouse" / "images" / "_delta_log")  # external: where it says

    work = tmp_path / "connect"
    common = ["--warehouse", str(work / "warehouse"), "--set", f"workdir={work}", "--set", "tables.schema=imgshards_named"]
    for setting in settings:
        common += ["--set", setting]
    second = run_on_connect(remote, "pipeline", "--input", classic.input, "--output", str(work / "shards"), *common)
    assert second["tables"]["images"] == "`imgshards_named`.`images`"
    for stage, keys in (("ingest", ("ingested", "duplicates", "quarantined")), ("preprocess", ("processed",)),
                        ("export", ("rows", "classes"))):
        assert {k: first[stage][k] for k in keys} == {k: second[stage][k] for k in keys}, stage
    # Managed by the metastore: in its warehouse, not in ours.
    assert (metastore / "metastore_db").is_dir() and not (work / "warehouse" / "images").exists()
    for table, columns in TABLE_COLUMNS:
        managed = str(metastore / "warehouse" / "imgshards_named.db" / table)
        assert rows(spark, classic.table(table), columns) == rows(spark, managed, columns), table
    assert loader_samples(classic.output) == loader_samples(str(work / "shards"))
    with open(second["report"]) as f:  # the report read the tables by name
        report = f.read()
    assert first["ingest"]["quarantine_reasons"] and all(reason in report for reason in first["ingest"]["quarantine_reasons"])

    again = run_pipeline(spark, classic, "classic-named-again")  # (a re-run on Connect: the test above)
    assert again["ingest"]["ingested"] == 0 and again["preprocess"]["processed"] == 0
    history = run_on_connect(remote, "history", *common)
    *_, ingested, created = history["tables"]["images"]
    assert created["operation"] == "CREATE TABLE" and ingested["job"] == "ingest" and ingested["run_id"] == second["run_id"]
    older = run_on_connect(remote, "export", "--output", str(tmp_path / "older"), "--as-of-version", "1", *common)
    assert older["export"]["source_version"] == 1 and older["export"]["rows"] == second["export"]["rows"]


def test_streaming_ingest_on_spark_connect(remote, tmp_path):
    """ingest --stream on Connect: the micro-batches run beside the server, their counts reach the job's
    summary, and a restart from the checkpoint reads only what is new."""
    raw = tmp_path / "raw"
    make_sample_dataset(str(raw), per_class=4, seed=5)
    common = ["--stream", "--input", str(raw), "--warehouse", str(tmp_path / "warehouse"),
              "--set", f"workdir={tmp_path}", "--set", "ingest.stream.max_files_per_trigger=10"]
    first = run_on_connect(remote, "ingest", *common)["ingest"]
    # The source lists every file with an image extension, the zero-byte one too, which it does not show
    # (docs/ingest.md): that one is in a micro-batch but not seen.
    extensions = {"." + e for e in load_config().ingest.extensions}
    listed = [p for p in raw.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions]
    assert first["seen"] > 10 and first["batches"] == -(-len(listed) // 10)
    assert first["ingested"] > 0 and first["quarantined"] > 0  # the sample has damaged files

    make_sample_dataset(str(tmp_path / "more"), per_class=2, seed=6)
    os.rename(tmp_path / "more" / "circle", raw / "new-circle")
    second = run_on_connect(remote, "ingest", *common)["ingest"]
    new_files = [name for name in os.listdir(raw / "new-circle") if not name.startswith(".")]  # (as Spark lists)
    assert second["seen"] == len(new_files) and second["batches"] == 1
    assert second["ingested"] + second["duplicates"] + second["quarantined"] == second["seen"]


def _packed_environment(venv: str, archive: str) -> None:
    """A packed environment as scripts/package.sh lays it out (pyvenv.cfg, bin/python a link to the base
    interpreter, the packages in lib/): here linking to this venv's packages instead of copying gigabytes."""
    import tarfile

    python = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(venv, "pyvenv.cfg"), "pyvenv.cfg")
        for name, target in (("bin/python", os.path.realpath(os.path.join(venv, "bin", "python"))),
                             (f"lib/{python}/site-packages", os.path.join(venv, "lib", python, "site-packages"))):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)


def test_the_packed_environment_reaches_connect_executors_as_an_artifact(remote, tmp_path):
    """connect.environment: the job uploads the archive; doctor, asking from inside the tasks, finds the
    executors' Python running it (unpacked as environment/), with every package the jobs need."""
    archive = str(tmp_path / "imgshards-nospark-env.tar.gz")
    _packed_environment(sys.prefix, archive)
    doctor = run_on_connect(remote, "doctor", "--set", f"workdir={tmp_path}", "--set", f"connect.environment={archive}")
    assert doctor["ok"] and doctor["executors"]
    for executor in doctor["executors"]:
        assert executor["packed_environment"], executor
        assert executor["executable"].endswith(os.path.join("environment", "bin", "python")), executor
        assert not executor["missing"]
    plain = run_on_connect(remote, "doctor", "--set", f"workdir={tmp_path}")
    assert not any(e["packed_environment"] for e in plain["executors"])
