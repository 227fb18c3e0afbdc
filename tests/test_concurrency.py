"""Concurrent writers on one warehouse: two ingests at once over overlapping inputs, and two preprocess runs
while an ingest commits. Each writer has its own Spark session (its own SQL conf, so its own commit
metadata) on the shared SparkContext, and runs in its own thread, so their Delta transactions interleave
for real. Conflicts are retried from the new version; nothing is lost or doubled."""
from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from collections import Counter

from pyspark.sql import functions as F

from imgshards.config import load_config
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import run_preprocess
from imgshards.sample import make_sample_dataset
from imgshards.schemas import SAMPLE_KEY


def in_threads(*calls):
    """Run the calls at once, each in a thread; re-raise the first error; return their results."""
    results, errors = [None] * len(calls), []
    barrier = threading.Barrier(len(calls))

    def run(i, call):
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def config_for(tmp_path, *overrides):
    base = load_config(overrides=["preprocess.size=32", "ingest.near_duplicates.enabled=false", *overrides])
    return dataclasses.replace(base, warehouse=str(tmp_path / "warehouse"), output=str(tmp_path / "shards"),
                               workdir=str(tmp_path))


def files_under(root):
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)


def test_two_ingests_at_once_over_overlapping_inputs(spark, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    make_sample_dataset(str(one), per_class=5, seed=21)
    make_sample_dataset(str(two), per_class=3, seed=22)
    # Half of one's files also under two, as other paths with the same bytes: only one of each pair may
    # become an image, the other a duplicate, whichever run commits first.
    for path in files_under(one)[::2]:
        target = two / "copies" / os.path.relpath(path, one)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    config = config_for(tmp_path)
    first, second = spark.newSession(), spark.newSession()
    counts = in_threads(lambda: run_ingest(first, config, str(one), "run-a"),
                        lambda: run_ingest(second, config, str(two), "run-b"))

    images = spark.read.format("delta").load(config.table("images").path)
    duplicates = spark.read.format("delta").load(config.table("duplicates").path)
    quarantine = spark.read.format("delta").load(config.table("quarantine").path)
    paths = Counter(r[0] for t in (images, duplicates, quarantine.filter("stage = 'ingest'")) for r in t.select("path").collect())
    assert max(paths.values()) == 1, [p for p, n in paths.items() if n > 1]
    skipped = sum(c.skipped_hidden + c.skipped_non_image for c in counts)
    assert len(paths) + skipped == len(files_under(one)) + len(files_under(two))
    assert images.groupBy("sha256").count().filter("count > 1").count() == 0, "the same content twice in images"
    # What each run reported adds up to what the tables hold (a retried run counts from the new version).
    assert sum(c.ingested for c in counts) == images.count()
    assert sum(c.duplicates for c in counts) == duplicates.count()


def test_two_preprocess_runs_while_an_ingest_commits(spark, tmp_path):
    raw, more = tmp_path / "raw", tmp_path / "more"
    make_sample_dataset(str(raw), per_class=5, seed=31)
    make_sample_dataset(str(more), per_class=3, seed=32)
    config = config_for(tmp_path)
    run_ingest(spark, config, str(raw), "ingest-1")
    sessions = [spark.newSession() for _ in range(3)]
    in_threads(lambda: run_preprocess(sessions[0], config, "pre-a"),
               lambda: run_preprocess(sessions[1], config, "pre-b"),
               lambda: run_ingest(sessions[2], config, str(more), "ingest-2"))

    processed = spark.read.format("delta").load(config.table("processed").path)
    repeated = processed.groupBy(*SAMPLE_KEY).count().filter("count > 1")
    assert repeated.count() == 0, repeated.limit(5).collect()
    # Every image of the version the preprocess runs read has its sample (from one run or the other).
    first_version = spark.read.format("delta").option("versionAsOf", 1).load(config.table("images").path)
    missing = first_version.select("sha256").join(processed.filter(F.col("copy") == 0), "sha256", "left_anti")
    assert missing.count() == 0


class ConcurrentAppendException(Exception):
    """Named as Delta's: what tables.is_conflict takes for a commit conflict."""


def test_a_conflict_after_the_images_commit_counts_those_rows_as_ingested(spark, tmp_path, monkeypatch):
    """A conflict in a write after ``images`` committed retries the batch, which then finds the run's own rows
    unchanged: they are still counted as ingested, so the counts add up to what the tables hold."""
    from imgshards.delta import tables

    make_sample_dataset(str(tmp_path / "raw"), per_class=5, seed=23)
    config = config_for(tmp_path)
    real_upsert, raised = tables.upsert, []

    def upsert(spark, table, *args, **kwargs):
        if tables.as_table(table) == config.table("duplicates") and not raised:
            raised.append(table)
            raise ConcurrentAppendException("another writer appended to duplicates (injected)")
        return real_upsert(spark, table, *args, **kwargs)

    monkeypatch.setattr(tables, "upsert", upsert)
    monkeypatch.setattr(tables, "CONFLICT_BASE_DELAY_S", 0.01)
    counts = run_ingest(spark, config, str(tmp_path / "raw"), "run-c")
    assert raised, "the injected conflict did not happen: the sample has no duplicates"
    images = spark.read.format("delta").load(config.table("images").path)
    assert counts.ingested == images.count() > 0 and counts.unchanged == 0
    assert counts.duplicates == spark.read.format("delta").load(config.table("duplicates").path).count() > 0
