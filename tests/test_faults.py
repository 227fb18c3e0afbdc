"""Jobs killed with SIGKILL (driver JVM and Python together, as a lost node or an OOM killer leaves them)
and run again: Delta shows nothing of the killed transaction, and the next run completes the tables with
every file exactly once; a killed export leaves the published version as it was, readable."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import signal
import subprocess
import time
from collections import Counter

import pytest

from imgshards.config import load_config
from imgshards.export.publish import ABANDONED_AFTER_S, prune
from imgshards.export.run import MANIFEST_FILE, run_export
from imgshards.ingest.rules import has_extension
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import run_preprocess
from imgshards.sample import make_sample_dataset
from imgshards.schemas import SPLITS
from imgshards.train.loader import make_dataloader

from helpers import LAUNCHER, ROOT, launch


def start_job(*args: str, log_path: str) -> subprocess.Popen:
    """``./spark-submit.sh <args>`` in its own process group (so one killpg takes driver JVM and Python)."""
    log = open(log_path, "w")
    return subprocess.Popen([LAUNCHER, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(process: subprocess.Popen, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the job ended (exit {process.returncode}) before it could be killed")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("the moment to kill never came")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def committed_files(table: str) -> set:
    """Data files the Delta log of ``table`` adds and does not remove (no checkpoints at these sizes)."""
    live = set()
    for commit in sorted(glob.glob(os.path.join(table, "_delta_log", "*.json"))):
        with open(commit) as f:
            for line in f:
                action = json.loads(line)
                if "add" in action:
                    live.add(action["add"]["path"])
                elif "remove" in action:
                    live.discard(action["remove"]["path"])
    return live


def data_files(table: str) -> set:
    return {os.path.relpath(p, table) for p in glob.glob(os.path.join(table, "*.parquet"))}


def every_file_once(spark, warehouse: str) -> Counter:
    paths = Counter()
    for table, where in (("images", "true"), ("duplicates", "true"), ("quarantine", "stage = 'ingest'")):
        paths.update(r[0] for r in spark.read.format("delta").load(os.path.join(warehouse, table))
                     .filter(where).select("path").collect())
    return paths


def ingest_args(input_root: str, work, *more: str) -> list:
    return ["ingest", "--input", input_root, "--warehouse", str(work / "warehouse"),
            "--set", f"workdir={json.dumps(str(work))}", "--set", "progress.interval_seconds=0", *more]


@pytest.mark.slow
def test_streaming_ingest_killed_mid_batch_restarts_from_its_checkpoint(spark, tmp_path):
    raw = str(tmp_path / "raw")
    make_sample_dataset(raw, per_class=12, seed=41)
    files = sum(len(names) for _, _, names in os.walk(raw))
    checkpoint = tmp_path / "warehouse" / "_checkpoints" / "ingest"
    stream = ["--stream", "--set", "ingest.stream.max_files_per_trigger=8", "--set", "ingest.stream.trigger='1 second'"]

    def mid_batch() -> bool:  # a micro-batch planned (offsets/N) but not yet committed (commits/N), after one that was
        offsets, commits = ({int(n) for n in os.listdir(checkpoint / kind) if n.isdigit()} if (checkpoint / kind).is_dir()
                            else set() for kind in ("offsets", "commits"))
        return bool(commits) and bool(offsets - commits)

    job = start_job(*ingest_args(raw, tmp_path, *stream), log_path=str(tmp_path / "killed.log"))
    kill_when(job, mid_batch)
    with open(tmp_path / "killed.log") as f:
        assert "Traceback" not in f.read()

    again = launch(*ingest_args(raw, tmp_path, "--stream"))
    assert again.returncode == 0, again.stderr[-3000:]
    paths = every_file_once(spark, str(tmp_path / "warehouse"))
    assert max(paths.values()) == 1, [p for p, n in paths.items() if n > 1]
    # Streaming cannot see zero-byte files, hidden files and non-images are never rows (docs/ingest.md).
    skipped = sum(1 for _, _, names in os.walk(raw) for n in names if n.startswith(".") or n.endswith((".txt", ".json")))
    zero = sum(1 for d, _, names in os.walk(raw) for n in names if os.path.getsize(os.path.join(d, n)) == 0)
    assert len(paths) == files - skipped - zero


@pytest.mark.slow
def test_batch_ingest_killed_before_its_commit_leaves_the_tables_as_they_were(spark, tmp_path):
    first, more = str(tmp_path / "raw" / "first"), str(tmp_path / "raw" / "more")
    make_sample_dataset(first, per_class=6, seed=51)
    done = launch(*ingest_args(first, tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    images = str(tmp_path / "warehouse" / "images")
    before_files, before_log = committed_files(images), sorted(os.listdir(os.path.join(images, "_delta_log")))
    before_rows = sorted(map(tuple, spark.read.format("delta").load(images).select("path", "sha256").collect()))

    make_sample_dataset(more, per_class=6, seed=52)
    job = start_job(*ingest_args(str(tmp_path / "raw"), tmp_path), log_path=str(tmp_path / "killed.log"))
    # Killed once the run's MERGE has written data files into images, before the commit that would add them.
    kill_when(job, lambda: bool(data_files(images) - before_files))

    assert sorted(os.listdir(os.path.join(images, "_delta_log"))) == before_log, "the killed run committed"
    assert data_files(images) - before_files, "the killed run had written files (the test kills mid-write)"
    after_rows = sorted(map(tuple, spark.read.format("delta").load(images).select("path", "sha256").collect()))
    assert after_rows == before_rows, "files of an uncommitted transaction are visible"

    again = launch(*ingest_args(str(tmp_path / "raw"), tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    paths = every_file_once(spark, str(tmp_path / "warehouse"))
    assert max(paths.values()) == 1
    listed = sum(1 for _, _, names in os.walk(tmp_path / "raw") for n in names if not n.startswith("."))
    extensions = load_config().ingest.extensions
    non_images = sum(1 for _, _, names in os.walk(tmp_path / "raw") for n in names
                     if not n.startswith(".") and not has_extension(n, extensions))
    assert len(paths) == listed - non_images


@pytest.mark.slow
def test_export_killed_before_publishing_leaves_the_previous_version_readable(spark, tmp_path):
    raw, output = str(tmp_path / "raw"), tmp_path / "shards"
    make_sample_dataset(raw, per_class=8, seed=61)
    config = dataclasses.replace(load_config(), warehouse=str(tmp_path / "warehouse"), output=str(output),
                                 workdir=str(tmp_path))
    run_ingest(spark, config, raw, "e1")
    run_preprocess(spark, config, "e1")
    run_export(spark, config, "e1")
    published = (output / MANIFEST_FILE).read_text()

    def samples() -> dict:
        return {split: sorted(s for batch in make_dataloader(str(output), split, batch_size=1, shuffle=False,
                                                             workers=1, collate=False)
                              for s in batch["sample_id"])
                for split in SPLITS}

    before = samples()
    assert sum(map(len, before.values())) == sum(s["rows"] for s in json.loads(published)["splits"].values())

    def export(run_id: str) -> list:
        return ["export", "--warehouse", config.warehouse, "--output", str(output), "--run-id", run_id,
                "--set", f"workdir={json.dumps(str(tmp_path))}", "--set", "progress.interval_seconds=0"]

    job = start_job(*export("e2"), log_path=str(tmp_path / "killed.log"))
    # Killed once the new version's first split is on disk, before the manifest that would publish it.
    kill_when(job, lambda: bool(glob.glob(str(output / "v-e2" / "*" / "*.parquet"))))
    assert (output / MANIFEST_FILE).read_text() == published
    assert not (output / "v-e2" / MANIFEST_FILE).exists()
    assert samples() == before  # the published version reads whole, beside the half-written one

    again = launch(*export("e3"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((output / MANIFEST_FILE).read_text())["version_dir"] == "v-e3"
    assert samples() == before  # same tables, same samples
    # The half-written folder is left alone (it could be another export still writing) until nothing in it
    # has changed for a day; then the next clean-up removes it.
    assert sorted(p.name for p in output.glob("v-*")) == ["v-e1", "v-e2", "v-e3"]
    day_ago = time.time() - ABANDONED_AFTER_S - 60
    for path in [output / "v-e2", *(output / "v-e2").rglob("*")]:
        os.utime(path, (day_ago, day_ago))
    assert prune(spark, str(output), 2, "v-e3") == ["v-e2"]
    assert sorted(p.name for p in output.glob("v-*")) == ["v-e1", "v-e3"] and samples() == before
