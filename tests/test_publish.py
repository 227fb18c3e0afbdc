"""Exports to one output at the same time lose nothing: two export processes (two drivers, every format) at
once; a version still being written is never pruned, a killed export's leftovers are once abandoned; an older
export never replaces a newer published one; the manifest is replaced with no moment without one (local
and through Hadoop's FileContext); run ids are checked before they name anything."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time

import pytest

from imgshards.config import ConfigError, load_config
from imgshards.export.publish import ABANDONED_AFTER_S, publish_manifest
from imgshards.export.run import run_export
from imgshards.ingest.run import run_ingest
from imgshards.jobs import get_job
from imgshards.jobs.contract import check_run_id
from imgshards.preprocess.run import run_preprocess
from imgshards.sample import make_sample_dataset
from imgshards.train.loader import make_dataloader, read_manifest

from format_readers import every_format
from helpers import LAUNCHER, ROOT


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """Tables ready to export (ingest and preprocess done once)."""
    work = tmp_path_factory.mktemp("publish")
    make_sample_dataset(str(work / "raw"), per_class=6, seed=17)
    config = dataclasses.replace(load_config(overrides=["preprocess.size=32", "export.files_per_split=1"]),
                                 warehouse=str(work / "wh"), output=str(work / "unused"), workdir=str(work))
    run_ingest(spark, config, str(work / "raw"), "w")
    run_preprocess(spark, config, "w")
    return config


def _samples(root: str) -> int:
    return sum(len(batch["sha256"]) for split in ("train", "val", "test")
               for batch in make_dataloader(root, split, 4, workers=1, shuffle=False, remainder="pad"))


@pytest.mark.slow
def test_two_export_processes_at_once(warehouse, tmp_path):
    output = str(tmp_path / "shards")
    logs = []
    processes = []
    for run_id in ("first", "second"):
        log = open(tmp_path / f"{run_id}.log", "w")
        logs.append(log)
        processes.append(subprocess.Popen(
            [LAUNCHER, "export", "--warehouse", warehouse.warehouse, "--output", output, "--run-id", run_id,
             "--set", "preprocess.size=32", "--set", "export.files_per_split=1", "--set", "export.keep_versions=1",
             "--set", "export.formats=[petastorm,mds,webdataset]", "--set", "export.min_shards=2",
             "--set", f"workdir={tmp_path}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    for process, log in zip(processes, logs):
        assert process.wait(timeout=600) == 0, open(log.name).read()[-3000:]
    manifest = read_manifest(output)
    assert manifest["run_id"] in ("first", "second")
    assert os.path.isdir(os.path.join(output, manifest["version_dir"]))
    assert _samples(output) == sum(s["rows"] for s in manifest["splits"].values()) > 0  # reads whole
    for split, info in manifest["splits"].items():  # and so do the other formats, by their own readers
        readers = every_format(info, str(tmp_path / "cache" / split))
        expected = readers.pop("petastorm")
        assert sorted(readers) == ["mds", "webdataset", "wids"] and all(r == expected for r in readers.values()), split
    assert not [n for n in os.listdir(output) if n.endswith(".tmp")]


def test_a_version_being_written_is_never_pruned_and_an_abandoned_one_is(spark, warehouse, tmp_path):
    config = dataclasses.replace(warehouse, output=str(tmp_path / "shards"))
    writing, abandoned = tmp_path / "shards" / "v-writing" / "train", tmp_path / "shards" / "v-killed" / "train"
    for folder in (writing, abandoned):
        folder.mkdir(parents=True)
        (folder / "part-00000.parquet").write_bytes(b"half")
    old = time.time() - ABANDONED_AFTER_S - 60
    for path in (abandoned / "part-00000.parquet", abandoned, abandoned.parent):
        os.utime(path, (old, old))
    config = dataclasses.replace(config, export=dataclasses.replace(config.export, keep_versions=1))
    run_export(spark, config, "one")
    run_export(spark, config, "two")
    assert sorted(n for n in os.listdir(tmp_path / "shards") if n.startswith("v-")) == ["v-two", "v-writing"]
    assert read_manifest(config.output)["run_id"] == "two"


def test_an_older_export_never_replaces_a_newer_published_one(tmp_path):
    output = str(tmp_path / "shards")
    os.makedirs(output)
    newer = {"run_id": "newer", "version_dir": "v-newer", "created_at": "2026-12-07T10:00:00+00:00"}
    older = {"run_id": "older", "version_dir": "v-older", "created_at": "2026-12-07T09:00:00+00:00"}
    assert publish_manifest(None, output, json.dumps(newer), "newer")
    assert not publish_manifest(None, output, json.dumps(older), "older")
    with open(os.path.join(output, "manifest.json")) as f:
        assert json.load(f)["run_id"] == "newer"
    assert os.listdir(output) == ["manifest.json"]  # no temporary left behind


def test_publishing_through_hadoop_replaces_the_manifest_in_one_rename(spark, tmp_path):
    output = "file://" + str(tmp_path / "shards")  # not a local path: Hadoop's FileContext publishes it
    os.makedirs(tmp_path / "shards")
    for hour in (9, 10):
        text = json.dumps({"run_id": f"r{hour}", "created_at": f"2026-12-07T{hour:02d}:00:00+00:00"})
        assert publish_manifest(spark, output, text, f"r{hour}")
    with open(tmp_path / "shards" / "manifest.json") as f:
        assert json.load(f)["run_id"] == "r10"
    assert [n for n in os.listdir(tmp_path / "shards") if not n.startswith(".")] == ["manifest.json"]


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "", ".hidden", "-dash", "x" * 129, "a..b", "new\nline"])
def test_run_ids_that_would_leave_their_folder_are_refused(run_id, tmp_path, capsys):
    with pytest.raises(ConfigError, match="--run-id"):
        check_run_id(run_id)
    code = get_job("export").main([f"--run-id={run_id}", "--output", str(tmp_path / "out"),
                                   "--warehouse", str(tmp_path / "wh")])
    assert code == 2 and "--run-id" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_a_run_id_that_made_a_finished_export_is_not_reused(spark, warehouse, tmp_path):
    config = dataclasses.replace(warehouse, output=str(tmp_path / "shards"))
    run_export(spark, config, "once")
    before = read_manifest(config.output)
    with pytest.raises(ConfigError, match="never rewritten in place"):
        run_export(spark, config, "once")
    assert read_manifest(config.output)["created_at"] == before["created_at"]
