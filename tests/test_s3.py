"""Object storage end to end against a real S3 API (moto's server on 127.0.0.1, started by the s3_endpoint
fixture): the pipeline s3a -> s3a and s3a -> local, streaming ingest from a bucket, training reads from
s3://, exports moved elsewhere, independent readers (delta-rs, pyarrow), and bad locations failing at
start naming the URL and the cause."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from imgshards.config import load_config
from imgshards.io.filesystems import s3_filesystem
from imgshards.jobs import get_job
from imgshards.jobs import ingest as ingest_job
from imgshards.jobs.contract import prepare_storage
from imgshards.jobs.pipeline import run_pipeline
from imgshards.sample import make_sample_dataset
from imgshards.train.loader import make_dataloader, read_manifest

from format_readers import assert_one_epoch, mds_ddp_epoch, mds_samples, parquet_samples, webdataset_samples
from helpers import (
    TEST_AWS_CREDENTIALS,
    free_port,
    launch,
    loader_samples,
    moto_server,
    needs_petastorm,
    read_with_petastorm,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    """pyarrow's S3 file system on the test server, and a helper that makes a bucket (with boto3)."""
    import boto3

    fs = s3_filesystem(s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint)

    def bucket(name: str) -> str:
        if fs.get_file_info(name).type == pafs.FileType.NotFound:
            client.create_bucket(Bucket=name)
        return name

    return fs, bucket


@pytest.fixture(scope="module")
def raw_in_s3(tmp_path_factory, s3):
    fs, bucket = s3
    local = tmp_path_factory.mktemp("raw")
    manifest = make_sample_dataset(str(local), per_class=20, seed=11)
    bucket("raw-images")
    assert copy_tree(pafs.LocalFileSystem(), str(local), fs, "raw-images/sample") == manifest.files
    return "s3a://raw-images/sample", manifest


def copy_tree(source_fs, source: str, destination_fs, destination: str) -> int:
    """Copy every file under ``source`` to ``destination``, one stream at a time (pyarrow.fs.copy_files hung
    against the test server); returns how many."""
    count = 0
    for info in source_fs.get_file_info(pafs.FileSelector(source, recursive=True)):
        if info.type == pafs.FileType.File:
            target = destination + info.path[len(source):]
            if isinstance(destination_fs, pafs.LocalFileSystem):
                destination_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with source_fs.open_input_stream(info.path) as src, destination_fs.open_output_stream(target) as dst:
                dst.write(src.read())
            count += 1
    return count


def s3_config(endpoint: str, *overrides: str, **paths):
    config = load_config(overrides=["preprocess.size=32", f"storage.s3.endpoint={endpoint}", *overrides])
    return dataclasses.replace(config, **paths)


def accounted(ingest: dict) -> int:
    return sum(ingest[k] for k in ("ingested", "updated", "unchanged", "duplicates", "quarantined",
                                   "skipped_hidden", "skipped_non_image"))


@pytest.fixture(scope="module")
def s3_pipeline(spark, s3, s3_endpoint, raw_in_s3, tmp_path_factory):
    _, bucket = s3
    bucket("lake")
    raw, manifest = raw_in_s3
    config = s3_config(s3_endpoint, "export.formats=[petastorm,mds,webdataset]", "export.min_shards=3",
                       input=raw, warehouse="s3a://lake/delta", output="s3a://lake/shards",
                       workdir=str(tmp_path_factory.mktemp("work")))
    prepare_storage(spark, config, get_job("pipeline").locations)
    summary = run_pipeline(spark, config, "s3-run")
    return config, summary, manifest


def test_pipeline_s3a_to_s3a_accounts_for_every_object(s3_pipeline, s3):
    config, summary, manifest = s3_pipeline
    ingest = summary["ingest"]
    assert ingest["seen"] == manifest.files == accounted(ingest)
    assert ingest["ingested"] == manifest.images and ingest["skipped_hidden"] == 1 and ingest["skipped_non_image"] == 1
    assert summary["preprocess"]["processed"] == manifest.images
    fs, _ = s3
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector("lake/shards"))}
    assert {"manifest.json", "classes.json"} <= names and any(n.startswith("v-") for n in names)
    with fs.open_input_stream("lake/shards/manifest.json") as f:
        written = json.loads(f.read())
    assert written["manifest_format"] == 2 and "s3a://" not in json.dumps(written["splits"])  # relative paths


def test_reference_content_reads_the_sources_from_s3_in_the_python_workers(spark, s3_endpoint, raw_in_s3, tmp_path):
    """ingest.content=reference on an s3a:// input: images keeps no bytes, and preprocess's Python workers read
    every source from the S3 server themselves (pyarrow, with storage.s3 and the environment's credentials)."""
    from imgshards.ingest.run import run_ingest
    from imgshards.preprocess.run import run_preprocess

    raw, manifest = raw_in_s3
    config = s3_config(s3_endpoint, warehouse=str(tmp_path / "warehouse"), workdir=str(tmp_path))
    config = dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, content="reference"))
    prepare_storage(spark, dataclasses.replace(config, input=raw), get_job("ingest").locations)
    assert run_ingest(spark, config, raw, "ref").ingested == manifest.images
    images = spark.read.format("delta").load(config.table("images").path)
    assert images.filter("content IS NOT NULL").count() == 0
    made = run_preprocess(spark, config, "ref")
    assert made.processed == manifest.images and made.quarantined == 0


def test_history_reads_the_tables_on_s3(s3_pipeline, spark):
    from imgshards.delta import tables

    config, _, _ = s3_pipeline
    [latest, *_] = tables.history(spark, config.table("images").path, 5)
    assert latest["run_id"] == "s3-run" and latest["job"] == "ingest"


def test_independent_readers_count_what_the_job_reported(s3_pipeline, s3_endpoint):
    config, summary, _ = s3_pipeline
    deltalake = pytest.importorskip("deltalake", reason="deltalake (delta-rs) needs Python >= 3.10")
    options = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": TEST_AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": TEST_AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}

    def delta_rows(table: str) -> int:
        # The table's current files as delta-rs resolves them from the log, counted from their Parquet footers:
        # not the add actions' num_records, which are absent where the writer collected no file statistics.
        return deltalake.DeltaTable(f"s3://lake/delta/{table}", storage_options=options).to_pyarrow_dataset().count_rows()

    ingest = summary["ingest"]
    assert delta_rows("images") == ingest["ingested"]
    assert delta_rows("quarantine") == ingest["quarantined"]
    assert delta_rows("duplicates") == ingest["duplicates"]
    assert delta_rows("processed") == summary["preprocess"]["processed"]

    manifest = read_manifest("s3://lake/shards", s3_endpoint)
    fs = s3_filesystem(s3_endpoint)
    for split, rows in summary["export"]["rows"].items():
        path = manifest["splits"][split]["url"].removeprefix("s3://")
        assert pq.read_table(path, filesystem=fs).num_rows == rows == manifest["splits"][split]["rows"]


def test_input_in_s3_with_local_outputs(spark, s3_endpoint, raw_in_s3, tmp_path):
    raw, manifest = raw_in_s3
    config = s3_config(s3_endpoint, input=raw, warehouse=str(tmp_path / "delta"), output=str(tmp_path / "shards"),
                       workdir=str(tmp_path))
    prepare_storage(spark, config, get_job("pipeline").locations)
    summary = run_pipeline(spark, config, "s3-to-local")
    assert summary["ingest"]["seen"] == manifest.files == accounted(summary["ingest"])
    loader = make_dataloader(str(tmp_path / "shards"), "train", 8, shuffle=False, workers=1)
    assert sum(len(b["sha256"]) for b in loader) == summary["export"]["rows"]["train"] > 0


def test_streaming_ingest_from_a_bucket(spark, s3, s3_endpoint, raw_in_s3, tmp_path):
    from imgshards.ingest.run import run_ingest_stream

    raw, manifest = raw_in_s3
    s3[1]("lake")
    config = s3_config(s3_endpoint, input=raw, warehouse="s3a://lake/stream-delta", workdir=str(tmp_path))
    prepare_storage(spark, config, get_job("ingest").locations)
    counts = run_ingest_stream(spark, config, raw, "stream-1")
    # Spark's streaming file source does not show hidden files (docs/ingest.md: a batch run counts them).
    assert counts.ingested == manifest.images
    again = run_ingest_stream(spark, config, raw, "stream-2")
    assert again.ingested == 0  # the checkpoint (on S3 too) remembers every object


@pytest.mark.parametrize("backend", ["arrow", pytest.param("petastorm", marks=needs_petastorm)])
def test_training_reads_a_split_from_s3_with_ddp_coverage_and_resume(s3_pipeline, s3_endpoint, backend):
    config, summary, _ = s3_pipeline
    url = "s3://lake/shards"
    total = summary["export"]["rows"]["train"]
    seen = []
    for rank in range(2):
        loader = make_dataloader(url, "train", 4, seed=3, cur_shard=rank, shard_count=2, backend=backend,
                                 s3_endpoint=s3_endpoint, collate=False, workers=1)
        ids = [i for batch in loader for i in batch["sample_id"]]
        assert len(ids) == total // 2  # equal shares; remainder="drop" leaves out total mod 2
        seen += ids
    assert len(seen) == len(set(seen)) == total - total % 2  # no sample on two ranks

    loader = make_dataloader(url, "train", 4, seed=3, backend=backend, s3_endpoint=s3_endpoint, collate=False,
                             workers=1)
    whole = [i for batch in loader for i in batch["sample_id"]]
    resumed = make_dataloader(url, "train", 4, seed=3, backend=backend, s3_endpoint=s3_endpoint, collate=False,
                              workers=1)
    iterator = iter(resumed)
    first = [i for _ in range(2) for i in next(iterator)["sample_id"]]
    state = resumed.state_dict()
    rest_loader = make_dataloader(url, "train", 4, seed=3, backend=backend, s3_endpoint=s3_endpoint, collate=False,
                                  workers=1)
    rest_loader.load_state_dict(state)
    rest = [i for batch in rest_loader for i in batch["sample_id"]]
    assert sorted(first + rest) == sorted(whole) and not set(first) & set(rest)


def test_mds_and_webdataset_shards_on_s3_read_as_the_petastorm_split(s3_pipeline, s3_endpoint, tmp_path,
                                                                    monkeypatch):
    """StreamingDataset streams the MDS shards from s3:// (its S3 client takes the endpoint from
    S3_ENDPOINT_URL) and WebDataset reads the tar shards through a ``pipe:`` command, as trainers do; each
    yields the Petastorm split's samples, byte for byte."""
    config, _, _ = s3_pipeline
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # boto3 in the pipe: command
    fetch = ("pipe:" + sys.executable + " -c 'import sys, boto3; bucket, key = sys.argv[1][5:].split(\"/\", 1); "
             "boto3.client(\"s3\").download_fileobj(bucket, key, sys.stdout.buffer)'")
    manifest = read_manifest(config.output, s3_endpoint)
    for split, info in manifest["splits"].items():
        expected = parquet_samples(info["url"], s3_filesystem(s3_endpoint))
        assert len(expected) == info["rows"] > 0, split
        mds, wds = info["formats"]["mds"], info["formats"]["webdataset"]
        assert mds["url"].startswith("s3a://")
        remote = "s3://" + mds["url"][len("s3a://"):]
        assert mds_samples(local=str(tmp_path / split), remote=remote) == expected, split
        pattern = f"s3://{wds['url'][len('s3a://'):]}/{wds['pattern']}"
        assert webdataset_samples(f"{fetch} {pattern}") == expected, split


def test_streaming_ddp_from_s3_over_two_ranks_with_a_mid_epoch_resume(s3_pipeline, s3_endpoint, tmp_path):
    config, _, _ = s3_pipeline
    train = read_manifest(config.output, s3_endpoint)["splits"]["train"]
    remote = "s3://" + train["formats"]["mds"]["url"].split("://", 1)[1]
    first, resumed = mds_ddp_epoch(remote, str(tmp_path / "cache"), str(tmp_path), 2,
                                   env={"S3_ENDPOINT_URL": s3_endpoint})
    assert_one_epoch(first, resumed, set(parquet_samples(train["url"], s3_filesystem(s3_endpoint))), 2)


def test_a_moved_copy_of_an_export_reads_the_same(s3_pipeline, s3, s3_endpoint, tmp_path):
    """S3 -> local disk, and S3 -> another bucket, then the original is deleted: the copies still read,
    with identical samples."""
    fs, bucket = s3
    config, _, _ = s3_pipeline
    reference = make_dataloader("s3://lake/shards", "val", 4, shuffle=False, s3_endpoint=s3_endpoint, collate=False,
                                workers=1)
    expected = [(i, image.tobytes()) for batch in reference for i, image in zip(batch["sample_id"], batch["image"])]
    assert expected

    local_copy = tmp_path / "synced"
    copy_tree(fs, "lake/shards", pafs.LocalFileSystem(), str(local_copy))
    bucket("elsewhere")
    copy_tree(fs, "lake/shards", fs, "elsewhere/copy")
    moved = "lake/shards-moved-away"  # the original goes away while the copies are read
    copy_tree(fs, "lake/shards", fs, moved)
    fs.delete_dir("lake/shards")
    try:
        for url in (str(local_copy), "s3://elsewhere/copy"):
            loader = make_dataloader(url, "val", 4, shuffle=False, s3_endpoint=s3_endpoint, collate=False, workers=1)
            got = [(i, image.tobytes()) for batch in loader for i, image in zip(batch["sample_id"], batch["image"])]
            assert got == expected, url
    finally:
        copy_tree(fs, moved, fs, "lake/shards")


def test_a_manifest_from_before_relative_paths_is_still_read(s3_pipeline, s3_endpoint, tmp_path):
    fs = s3_filesystem(s3_endpoint)
    with fs.open_input_stream("lake/shards/manifest.json") as f:
        manifest = json.loads(f.read())
    # The old format: absolute URLs per split, no manifest_format, version_dir absolute.
    del manifest["manifest_format"]
    for info in manifest["splits"].values():
        info["url"] = "s3://lake/shards/" + info.pop("path")
    old = tmp_path / "old-export"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(manifest))
    loader = make_dataloader(str(old), "val", 2, shuffle=False, s3_endpoint=s3_endpoint, workers=1)
    assert sum(len(b["sha256"]) for b in loader) == manifest["splits"]["val"]["rows"] > 0


def test_republishing_replaces_the_manifest_and_prunes_old_versions_on_s3(spark, s3_pipeline, s3):
    from imgshards.export.run import run_export

    fs, _ = s3
    config, _, _ = s3_pipeline
    config = dataclasses.replace(config, export=dataclasses.replace(config.export, keep_versions=2))
    versions = []
    for run in ("again-1", "again-2"):
        run_export(spark, config, run)
        with fs.open_input_stream("lake/shards/manifest.json") as f:
            versions.append(json.loads(f.read())["version_dir"])
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector("lake/shards")) if i.base_name.startswith("v-"))
    assert versions == ["v-again-1", "v-again-2"] and names == versions  # the first run's version was pruned


def run_ingest_job(argv, capsys) -> tuple:
    code = ingest_job.main(argv, stop_session=False)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", ["unreachable endpoint", "missing bucket", "empty prefix"])
def test_a_bad_location_fails_at_start_naming_the_url_and_the_cause(spark, s3, s3_endpoint, tmp_path, capsys, case):
    _, bucket = s3
    bucket("empty-bucket")
    endpoint = f"http://127.0.0.1:{free_port()}" if case == "unreachable endpoint" else s3_endpoint
    url = {"unreachable endpoint": "s3a://raw-images/sample", "missing bucket": "s3a://no-such-bucket/raw",
           "empty prefix": "s3a://empty-bucket/nothing-here"}[case]
    cause = {"unreachable endpoint": "cannot be reached", "missing bucket": "does not exist",
             "empty prefix": "holds no objects"}[case]
    code, output = run_ingest_job(["--input", url, "--warehouse", str(tmp_path / "delta"),
                                   "--set", f"storage.s3.endpoint={endpoint}", "--set", f"workdir={tmp_path}"], capsys)
    assert code == 2, output
    assert url in output and cause in output, output
    assert "Py4J" not in output and "Traceback" not in output
    assert not os.path.exists(tmp_path / "delta")  # nothing half-written


def test_rejected_credentials_fail_at_start_naming_the_cause(spark, tmp_path, capsys):
    # A server that checks signatures against its own (empty) set of keys: ours are unknown to it.
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        code, output = run_ingest_job(["--input", "s3a://photos/raw", "--warehouse", str(tmp_path / "delta"),
                                       "--set", f"storage.s3.endpoint={endpoint}", "--set", f"workdir={tmp_path}"],
                                      capsys)
    assert code == 2, output
    assert "s3a://photos/raw" in output and "credentials were rejected" in output, output
    assert TEST_AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output


def test_credentials_from_the_environment_reach_no_log_or_summary(s3_pipeline, spark):
    config, summary, _ = s3_pipeline
    secret = TEST_AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    key = TEST_AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"]
    text = json.dumps(summary, default=str)
    text += json.dumps(config.to_dict())
    for table in ("images", "processed"):
        history = spark.sql(f"DESCRIBE HISTORY delta.`{config.table(table).path}`").collect()
        text += " ".join(str(row.asDict()) for row in history)
    assert secret not in text and key not in text
    assert re.search(r"s3a://lake/delta", text)  # the check looked where the tables are


def test_credentials_reach_nothing_a_spark_submit_run_writes(s3, s3_endpoint, raw_in_s3, tmp_path):
    """The whole pipeline through ./spark-submit.sh with INFO logs and Spark's event log on: the key and
    secret it signs with are in none of its console output, logs, summary, event log, manifest or commits."""
    fs, bucket = s3
    bucket("lake-submit")
    events = tmp_path / "events"
    events.mkdir()
    run = launch("pipeline", "--input", raw_in_s3[0], "--warehouse", "s3a://lake-submit/delta",
                 "--output", "s3a://lake-submit/shards", "--set", f"storage.s3.endpoint={s3_endpoint}",
                 "--set", f"workdir={json.dumps(str(tmp_path))}", "--set", "preprocess.size=32", timeout=900,
                 env={"SPARK_SUBMIT_OPTS_EXTRA": f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir={events} "
                                                 "--conf spark.eventLog.compress=false"})  # Spark 4 compresses it
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    written = [run.stdout, run.stderr]
    for folder, _, names in os.walk(tmp_path):  # summaries, logs, the event log, the report
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                written.append(f.read().decode("utf-8", "replace"))
    assert any("SparkListenerApplicationStart" in text for text in written)  # the event log was looked at
    for info in fs.get_file_info(pafs.FileSelector("lake-submit", recursive=True)):
        if info.type == pafs.FileType.File and info.path.endswith((".json", ".crc", ".txt")):
            with fs.open_input_stream(info.path) as f:  # Delta commits, manifests, classes
                written.append(f.read().decode("utf-8", "replace"))
    assert any('"commitInfo"' in text for text in written) and any('"splits"' in text for text in written)
    text = "\n".join(written)
    assert "INFO" in text and s3_endpoint in text  # the run logged, and logged where it wrote
    assert TEST_AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in text
    assert TEST_AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"] not in text


def test_the_loader_on_the_spark35_stack_trains_from_s3(s3_pipeline, s3_endpoint, old_stack):
    """numpy 1.26, pyarrow 14 and torch, as on Databricks 15.4 LTS ML: the arrow backend reads from s3:// with
    the endpoint from the environment, importing no Spark."""
    _, summary, _ = s3_pipeline
    code = """
import sys
import numpy, pyarrow
from imgshards.train.loader import make_dataloader
assert numpy.__version__.startswith('1.') and pyarrow.__version__.startswith('14.'), (numpy.__version__, pyarrow.__version__)
loader = make_dataloader('s3://lake/shards', 'train', 8, seed=1, workers=1)
print(sum(len(b['sha256']) for b in loader))
assert 'pyspark' not in sys.modules and 'petastorm' not in sys.modules
"""
    result = subprocess.run([old_stack.python, "-c", code], capture_output=True, text=True, timeout=600,
                            env={**old_stack.env("0.12.1"), "AWS_ENDPOINT_URL": s3_endpoint})
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) == summary["export"]["rows"]["train"]


def test_unmodified_petastorm_reads_the_export_on_s3_as_the_loader_does(s3_pipeline, s3_endpoint, old_stack):
    """Petastorm 0.12.1 and 0.13.1 (make_reader, make_batch_reader) on the export a Spark 4 job wrote to S3."""
    config, _, _ = s3_pipeline
    expected = loader_samples(config.output, s3_endpoint)
    assert all(expected.values())
    for version in old_stack.petastorm_versions:
        found = read_with_petastorm(old_stack, version, config.output, s3_endpoint)
        for reader in ("make_reader", "make_batch_reader"):
            assert found[reader] == expected, (version, reader)


def test_an_object_gone_between_listing_and_reading_is_quarantined_as_unreadable(spark, s3, s3_endpoint, tmp_path,
                                                                                  monkeypatch):
    from imgshards.ingest import run as ingest_module

    fs, bucket = s3
    bucket("vanishing")
    local = tmp_path / "raw"
    manifest = make_sample_dataset(str(local), per_class=4, seed=2)
    copy_tree(pafs.LocalFileSystem(), str(local), fs, "vanishing/raw")
    victim = next(i.path for i in fs.get_file_info(pafs.FileSelector("vanishing/raw", recursive=True))
                  if i.path.endswith(".png"))
    real_read_files = ingest_module.read_files

    def read_then_delete(*args, **kwargs):
        files = real_read_files(*args, **kwargs)  # Spark has listed the objects
        fs.delete_file(victim)  # and one goes before its task reads it
        return files

    monkeypatch.setattr(ingest_module, "read_files", read_then_delete)
    config = s3_config(s3_endpoint, input="s3a://vanishing/raw", warehouse=str(tmp_path / "delta"), workdir=str(tmp_path))
    prepare_storage(spark, config, get_job("ingest").locations)
    counts = ingest_module.run_ingest(spark, config, config.input, "vanish")
    assert counts.seen == manifest.files == accounted(dataclasses.asdict(counts))
    assert counts.quarantine_reasons.get("unreadable") == 1
    row = spark.read.format("delta").load(config.table("quarantine").path).filter("reason = 'unreadable'").collect()
    assert [r["path"] for r in row] == [f"s3a://{victim}"] and "gone" in row[0]["detail"]
