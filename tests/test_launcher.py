"""The launcher itself: ./spark-submit.sh runs the whole pipeline on the embedded default, and bad
settings or inputs fail fast with a message that names them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from imgshards.session import checkout_jars

from helpers import ROOT, launch


@pytest.mark.slow
def test_pipeline_on_embedded_default(tmp_path):
    work, events = tmp_path / "work", tmp_path / "events"
    events.mkdir()
    result = launch("pipeline", "--set", f"workdir={work}", "--warehouse", str(work / "warehouse"),
                    "--output", str(work / "shards"), "--set", "preprocess.size=64",
                    env={"SPARK_SUBMIT_OPTS_EXTRA": f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir={events}"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    seen = re.search(r"files seen\s+(\d+) = ingested (\d+) \+ updated (\d+) \+ unchanged (\d+) \+ duplicates (\d+)"
                     r" \+ quarantined (\d+) \+ skipped (\d+)", out)
    assert seen, out
    numbers = [int(x) for x in seen.groups()]
    assert numbers[0] == sum(numbers[1:])
    sample_files = sum(len(files) for _, _, files in os.walk(work / "sample"))
    assert numbers[0] == sample_files
    assert numbers[1] > 200 and numbers[5] >= 5

    summary_file = re.search(r"summary file\s+(\S+)", out).group(1)
    with open(summary_file) as f:
        summary = json.load(f)
    from imgshards.train.loader import read_manifest

    manifest = read_manifest(str(work / "shards"))
    assert sum(s["rows"] for s in manifest["splits"].values()) == summary["preprocess"]["processed"]

    from imgshards.train.loader import make_dataloader

    batches = list(make_dataloader(str(work / "shards"), "val", 8, shuffle=False, collate=False, workers=1))
    assert sum(len(b["sha256"]) for b in batches) == manifest["splits"]["val"]["rows"]
    assert batches[0]["image"].shape[1:] == (3, 64, 64)

    # Where the time went, from the run's event log: every Spark job in one of the stages or beside them
    # (the workers' start, the report gathered during export), and the stages (with the time before the
    # first job and after the last) make up the application's wall time.
    profile = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_run.py"), str(events), "--json"],
                             capture_output=True, text=True, check=True)
    run = json.loads(profile.stdout)
    by_stage = {row["stage"]: row for row in run["stages"]}
    beside = {row["stage"]: row for row in run["background"]}
    assert {"ingest", "preprocess", "export"} <= set(by_stage) and {"start", "report"} <= set(beside), (by_stage, beside)
    assert sum(row["jobs"] for row in run["stages"] + run["background"]) == run["jobs"]
    assert "(no stage)" not in by_stage | beside
    assert abs(sum(row["wall_s"] for row in run["stages"]) - run["wall_s"]) < 0.01
    # (ingest's Python workers read the local files themselves, so Spark's input metrics do not count them)
    assert by_stage["ingest"]["tasks"] > 0 and by_stage["preprocess"]["tasks"] > 0
    for stage in ("preprocess", "export"):  # the profile and the summary's own clock agree
        assert abs(by_stage[stage]["wall_s"] - summary["seconds"][stage]) < 3, (stage, by_stage[stage], summary["seconds"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["pipeline", "--set", "preprocess.size=0"], "preprocess.size"),
        (["ingest", "--set", "ingest.colour=red"], "ingest.colour"),
        (["export", "--conf-file", "/nonexistent.yaml"], "/nonexistent.yaml"),
    ],
)
def test_bad_setting_fails_fast_naming_it(args, message):
    result = launch(*args, timeout=120)
    output = result.stdout + result.stderr  # spark-submit merges the Python driver's stderr into stdout
    assert result.returncode == 2
    assert message in output
    assert "Traceback" not in output


def test_missing_input_path_fails_clearly(tmp_path):
    result = launch("ingest", "--input", str(tmp_path / "nope"), "--warehouse", str(tmp_path / "wh"), timeout=300)
    assert result.returncode == 2
    assert "input path does not exist" in result.stdout + result.stderr


def test_unknown_job_and_profile():
    assert launch("nosuchjob").returncode == 2
    result = launch("--profile", "nosuch", "pipeline")
    assert result.returncode == 2 and "unknown profile" in result.stderr


def test_cluster_run_with_a_missing_packed_environment_fails_naming_it(tmp_path):
    missing = str(tmp_path / "imgshards-env.tar.gz")
    result = launch("--profile", "standalone", "doctor", timeout=120, env={"IMGSHARDS_ENV_ARCHIVE": missing})
    assert result.returncode == 2
    assert missing in result.stderr and "scripts/package.sh" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--deploy-mode", "server", "doctor"], "--deploy-mode must be client or cluster"),
    (["--deploy-mode", "cluster", "pipeline"], "a local master has no cluster deploy mode"),
])
def test_bad_launcher_options_fail_naming_them(args, message):
    result = launch(*args, timeout=120)
    assert result.returncode == 2 and message in result.stderr


def _classes_from_the_archive(tmp_path, env: dict) -> int:
    """How many classes a local run's driver JVM took from the class-data archive's top layer."""
    logs = tmp_path / f"classes-{env.get('IMGSHARDS_CDS', 'on')}"
    logs.mkdir()
    # Every JVM of the launch logs its class loading to a file of its own (%p: its pid).
    result = launch("history", "--warehouse", str(tmp_path / "warehouse"),
                    env={**env, "JAVA_TOOL_OPTIONS": f"-Xlog:class+load=info:file={logs}/load-%p.txt"})
    assert result.returncode == 0, result.stderr[-3000:]
    texts = [path.read_text() for path in logs.iterdir()]
    assert any("org.apache.spark.SparkContext " in text for text in texts), "no driver JVM log was found"
    return sum(text.count("source: shared objects file (top)") for text in texts)


@pytest.mark.slow
def test_local_runs_load_their_classes_from_the_class_data_archive(tmp_path):
    shared = _classes_from_the_archive(tmp_path, {})
    archives = [name for name in os.listdir(os.path.join(checkout_jars(ROOT), "cds")) if name.endswith(".jsa")]
    assert len(archives) == 1, archives
    assert shared > 5000, "the run mapped the archive made for these jars (some 13,000 classes)"
    assert _classes_from_the_archive(tmp_path, {"IMGSHARDS_CDS": "0"}) == 0
