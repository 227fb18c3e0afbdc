"""Ingest on real Delta tables: re-runs, new and changed files, duplicates across runs, labels files,
groups, near-duplicates, deleted files, streaming with a restart, and the edge-cases corpus."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import random
import shutil
import zlib

import numpy as np
import pytest
from PIL import Image

from imgshards import imaging
from imgshards.config import load_config
from imgshards.delta import tables
from imgshards.ingest import near_duplicates
from imgshards.ingest import state as ingest_state
from imgshards.ingest.near_duplicates import aspect_key, near_pairs, node_key, stars
from imgshards.ingest.rules import split_of
from imgshards.ingest.run import run_ingest, run_ingest_stream
from imgshards.io import storage
from imgshards.preprocess.run import run_preprocess
from imgshards.sample import make_sample_dataset

from helpers import shared_dataset


def make_config(tmp_path, *overrides):
    base = load_config(overrides=["preprocess.size=32", *overrides])
    return dataclasses.replace(base, warehouse=str(tmp_path / "warehouse"), output=str(tmp_path / "shards"),
                               workdir=str(tmp_path))


def photo(seed: int, size=(96, 64)) -> Image.Image:
    """A smooth random image: distinct per seed, stable under re-encoding (for perceptual hashing)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def write_jpeg(path, img: Image.Image, quality: int = 90) -> bytes:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    with open(path, "wb") as f:
        f.write(out.getvalue())
    return out.getvalue()


def table(spark, config, name, version=None):
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(config.table(name).path)


def test_incremental_new_changed_and_duplicate_files(spark, tmp_path):
    raw = tmp_path / "raw"
    config = make_config(tmp_path)
    write_jpeg(raw / "cat" / "a.jpg", photo(1))
    write_jpeg(raw / "dog" / "b.jpg", photo(2))
    first = run_ingest(spark, config, str(raw), "r1")
    assert (first.seen, first.ingested) == (2, 2)

    again = run_ingest(spark, config, str(raw), "r2")
    assert (again.ingested, again.unchanged, again.updated) == (0, 2, 0)
    version_before_change = spark.sql(f"DESCRIBE HISTORY delta.`{config.table('images').path}`").agg({"version": "max"}).head()[0]

    write_jpeg(raw / "dog" / "c.jpg", photo(3))  # new
    new_a = write_jpeg(raw / "cat" / "a.jpg", photo(4))  # changed content, same path
    shutil.copy(raw / "dog" / "b.jpg", raw / "cat" / "b_copy.jpg")  # duplicate of an ingested file
    third = run_ingest(spark, config, str(raw), "r3")
    assert (third.seen, third.ingested, third.updated, third.unchanged, third.duplicates) == (4, 1, 1, 1, 1)

    rows = {r["path"].rsplit("/raw/", 1)[1]: r for r in table(spark, config, "images").collect()}
    assert sorted(rows) == ["cat/a.jpg", "dog/b.jpg", "dog/c.jpg"]
    assert rows["cat/a.jpg"]["sha256"] == hashlib.sha256(new_a).hexdigest()
    old = {r["path"].rsplit("/raw/", 1)[1]: r for r in table(spark, config, "images", version_before_change).collect()}
    assert old["cat/a.jpg"]["sha256"] != rows["cat/a.jpg"]["sha256"]  # time travel keeps the old content
    assert bytes(old["cat/a.jpg"]["content"]) != new_a

    dup = table(spark, config, "duplicates").collect()
    assert len(dup) == 1 and dup[0]["path"].endswith("cat/b_copy.jpg") and dup[0]["duplicate_of"].endswith("dog/b.jpg")

    history = spark.sql(f"DESCRIBE HISTORY delta.`{config.table('images').path}`").collect()
    metadata = [json.loads(h["userMetadata"]) for h in history if h["userMetadata"]]
    assert {"r1", "r3"} <= {m["run_id"] for m in metadata}
    assert all(m["config_fingerprint"] == config.fingerprint("ingest") for m in metadata)
    # tables.history reads the commit files themselves: what DESCRIBE HISTORY says, but for the timestamp,
    # which is the commit's own there and the commit file's modification time in Delta's.
    from_files = tables.history(spark, config.table("images").path, 3)
    described = tables._described_history(spark, config.table("images").path, 3)
    assert [h["version"] for h in from_files] == [len(history) - 1 - i for i in range(3)]
    assert len(described) == 3
    for mine, delta in zip(from_files, described):
        mine_time, delta_time = (dt.datetime.fromisoformat(h.pop("timestamp")) for h in (mine, delta))
        assert mine == delta and abs((mine_time - delta_time).total_seconds()) < 5


def test_rerun_with_nothing_changed_reads_no_file_and_reports_what_reading_would(spark, tmp_path):
    raw = tmp_path / "raw"
    make_sample_dataset(str(raw), per_class=6, seed=5)  # with duplicates, damaged and skipped files
    config = make_config(tmp_path)
    first = run_ingest(spark, config, str(raw), "r1")
    assert first.ingested and first.duplicates and first.quarantined and first.read_bytes

    skipped = run_ingest(spark, config, str(raw), "r2")
    read = run_ingest(spark, make_config(tmp_path, "ingest.skip_unchanged=false"), str(raw), "r3")
    assert skipped.read_bytes == 0 and read.read_bytes == first.read_bytes

    def outcome(counts):
        return {**dataclasses.asdict(counts), "read_bytes": 0, "batches": 0}
    assert outcome(skipped) == outcome(read)
    assert (skipped.ingested, skipped.unchanged) == (0, first.ingested)

    # The same bytes with a new modification time: every file is read; nothing is written.
    touched = next(iter(sorted(raw.rglob("*.jpg"))))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1_000_000_000))
    again = run_ingest(spark, config, str(raw), "r4")
    assert again.read_bytes and outcome(again) == outcome(read)
    assert run_ingest(spark, config, str(raw), "r5").read_bytes == 0

    # Another run's commit to the tables: every file is read again.
    write_jpeg(tmp_path / "other" / "x" / "o.jpg", photo(77))
    assert run_ingest(spark, config, str(tmp_path / "other"), "r6").ingested == 1
    assert run_ingest(spark, config, str(raw), "r7").read_bytes
    assert run_ingest(spark, config, str(raw), "r8").read_bytes == 0

    write_jpeg(raw / "new" / "n.jpg", photo(78))
    new = run_ingest(spark, config, str(raw), "r9")
    assert (new.ingested, new.unchanged, new.seen) == (1, first.ingested, first.seen + 1)


def test_ingest_state_is_not_kept_over_another_runs_commit(spark, tmp_path):
    raw, theirs = tmp_path / "raw", tmp_path / "theirs"
    write_jpeg(raw / "a" / "1.jpg", photo(1))
    write_jpeg(theirs / "b" / "2.jpg", photo(2))
    config = make_config(tmp_path, "ingest.skip_unchanged=false")  # the state written by hand below
    base = f"file:{raw}"
    digest = ingest_state.listing_digest(spark, config, base, storage.list_files(spark, str(raw)))
    before = ingest_state.table_versions(spark, config)
    mine = run_ingest(spark, config, str(raw), "mine")
    run_ingest(spark, config, str(theirs), "theirs")  # commits while "mine" would still be running
    ingest_state.record(spark, config, base, digest, before, mine, "mine")
    assert ingest_state.unchanged_counts(spark, config, base, digest) is None

    ingest_state.record(spark, config, base, digest, ingest_state.table_versions(spark, config), mine, "mine")
    assert ingest_state.unchanged_counts(spark, config, base, digest) == ingest_state.as_rerun(mine)


def test_a_missing_labels_file_fails_naming_the_setting(spark, tmp_path):
    write_jpeg(tmp_path / "raw" / "a" / "1.jpg", photo(1))
    for skip in ("true", "false"):
        config = make_config(tmp_path, "ingest.labels.source=file", f"ingest.labels.file={tmp_path / 'nope.csv'}",
                             f"ingest.skip_unchanged={skip}")
        with pytest.raises(FileNotFoundError, match="ingest.labels.file does not exist"):
            run_ingest(spark, config, str(tmp_path / "raw"), "r1")


def test_missing_files_kept_or_marked_deleted(spark, tmp_path):
    raw = tmp_path / "raw"
    write_jpeg(raw / "x" / "a.jpg", photo(10))
    write_jpeg(raw / "x" / "b.jpg", photo(11))
    keep = make_config(tmp_path)
    run_ingest(spark, keep, str(raw), "r1")
    os.remove(raw / "x" / "b.jpg")
    assert run_ingest(spark, keep, str(raw), "r2").marked_deleted == 0
    assert table(spark, keep, "images").filter("deleted_at IS NULL").count() == 2

    mark = make_config(tmp_path, "ingest.missing=mark_deleted")
    assert run_ingest(spark, mark, str(raw), "r3").marked_deleted == 1
    live = table(spark, mark, "images").filter("deleted_at IS NULL").collect()
    assert [r["path"].rsplit("/", 1)[1] for r in live] == ["a.jpg"]
    assert run_preprocess(spark, mark, "r3").processed == 1  # deleted rows are not processed

    write_jpeg(raw / "x" / "b.jpg", photo(11))  # it comes back
    back = run_ingest(spark, mark, str(raw), "r4")
    assert back.updated == 1
    assert table(spark, mark, "images").filter("deleted_at IS NULL").count() == 2


def test_quarantine_and_duplicates_follow_the_file(spark, tmp_path):
    """Each path's rows say what its file is now: a file cut short, then complete, leaves quarantine; the
    copy of an original that is removed takes its place; a file overwritten with a copy of another or with
    damaged bytes leaves images (its old content by time travel only)."""
    raw = tmp_path / "raw"
    whole = write_jpeg(raw / "x" / "cut.jpg", photo(40))
    with open(raw / "x" / "cut.jpg", "wb") as f:
        f.write(whole[: len(whole) // 2])
    original = write_jpeg(raw / "x" / "a.jpg", photo(41))
    (raw / "x" / "copy.jpg").write_bytes(original)
    write_jpeg(raw / "x" / "b.jpg", photo(42))
    write_jpeg(raw / "x" / "c.jpg", photo(43))
    write_jpeg(raw / "x" / "d.jpg", photo(44))
    write_jpeg(raw / "x" / "e.jpg", photo(45))
    config = make_config(tmp_path, "ingest.missing=mark_deleted")

    def where(name: str) -> dict:
        return {r["path"].rsplit("/", 1)[1]: r for r in table(spark, config, name).collect()}

    first = run_ingest(spark, config, str(raw), "r1")
    assert (first.ingested, first.duplicates, first.quarantined, first.superseded) == (5, 1, 1, {})
    assert set(where("quarantine")) == {"cut.jpg"} and set(where("duplicates")) == {"copy.jpg"}

    (raw / "x" / "cut.jpg").write_bytes(whole)  # complete now
    os.remove(raw / "x" / "a.jpg")  # the original of copy.jpg
    (raw / "x" / "b.jpg").write_bytes((raw / "x" / "c.jpg").read_bytes())  # now a copy of c.jpg
    with open(raw / "x" / "c.jpg", "r+b") as f:  # c.jpg damaged in place: its copy b.jpg is the original now
        f.truncate(300)
    (raw / "x" / "e.jpg").write_bytes((raw / "x" / "d.jpg").read_bytes())  # now a duplicate of d.jpg
    second = run_ingest(spark, config, str(raw), "r2")
    assert second.marked_deleted == 1
    assert (second.updated, second.ingested) == (1, 2)  # b.jpg's new bytes; cut.jpg and copy.jpg
    assert second.superseded == {"duplicates": 1, "images": 2, "quarantine": 1}
    assert where("quarantine").keys() == {"c.jpg"} and where("duplicates").keys() == {"e.jpg"}
    images = where("images")
    live = {name for name, r in images.items() if r["deleted_at"] is None}
    assert live == {"cut.jpg", "copy.jpg", "b.jpg", "d.jpg"}, images
    assert images["copy.jpg"]["sha256"] == hashlib.sha256(original).hexdigest()
    assert images["b.jpg"]["sha256"] == hashlib.sha256((raw / "x" / "b.jpg").read_bytes()).hexdigest()
    assert all(images[name]["deleted_at"] is not None for name in ("a.jpg", "c.jpg", "e.jpg"))
    third = run_ingest(spark, config, str(raw), "r3")  # nothing more to retire, nothing written
    assert (third.superseded, third.ingested, third.updated) == ({}, 0, 0)


def test_labels_file_with_missing_entries_and_required_labels(spark, tmp_path):
    raw = tmp_path / "raw"
    for i in range(4):
        write_jpeg(raw / f"img{i}.jpg", photo(20 + i))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        w.writerow(["img0.jpg", "cat", "s1"])
        w.writerow(["img1.jpg", "dog", "s1"])
        w.writerow(["img2.jpg", "dog", "s2"])
        w.writerow(["gone1.jpg", "cat", ""])
        w.writerow(["gone2.jpg", "dog", ""])
    config = make_config(tmp_path, "ingest.labels.source=file", f"ingest.labels.file={labels}",
                         "ingest.labels.required=true")
    counts = run_ingest(spark, config, str(raw), "r1")
    assert (counts.seen, counts.ingested, counts.quarantined) == (4, 3, 1)
    assert counts.quarantine_reasons == {"unlabeled": 1}
    report = counts.labels_report
    assert report["entries"] == 5 and report["entries_without_file"] == 2
    assert sorted(report["entries_without_file_examples"]) == ["gone1.jpg", "gone2.jpg"]
    assert report["files_without_label"] == 1
    rows = {r["path"].rsplit("/", 1)[1]: r for r in table(spark, config, "images").collect()}
    assert {k: r["label"] for k, r in rows.items()} == {"img0.jpg": "cat", "img1.jpg": "dog", "img2.jpg": "dog"}
    assert rows["img0.jpg"]["split"] == rows["img1.jpg"]["split"] == split_of("", config.ingest.split, "s1")
    quarantined = table(spark, config, "quarantine").collect()
    assert [(q["path"].rsplit("/", 1)[1], q["reason"]) for q in quarantined] == [("img3.jpg", "unlabeled")]


def test_unlabeled_and_folder_level_labels(spark, tmp_path):
    raw = tmp_path / "raw"
    write_jpeg(raw / "birds" / "2024" / "a.jpg", photo(30))
    write_jpeg(raw / "top.jpg", photo(31))
    by_grandparent = make_config(tmp_path, "ingest.labels.folder_level=2")
    counts = run_ingest(spark, by_grandparent, str(raw), "r1")
    assert counts.labels_report["files_without_label"] == 1  # top.jpg has no grandparent folder
    labels = {r["path"].rsplit("/", 1)[1]: r["label"] for r in table(spark, by_grandparent, "images").collect()}
    assert labels == {"a.jpg": "birds", "top.jpg": None}

    none = make_config(tmp_path / "n", "ingest.labels.source=none")
    run_ingest(spark, none, str(raw), "r1")
    assert {r["label"] for r in table(spark, none, "images").collect()} == {None}


def test_group_regex_keeps_each_group_in_one_split(spark, tmp_path):
    raw = tmp_path / "raw"
    groups = [f"subject{g:02d}" for g in range(12)]
    for g, group in enumerate(groups):
        for k in range(3):
            write_jpeg(raw / "faces" / f"{group}_shot{k}.jpg", photo(1000 + 10 * g + k))
    config = make_config(tmp_path, r"ingest.group_regex=(?P<group>subject\d+)_", "ingest.near_duplicates.enabled=false")
    run_ingest(spark, config, str(raw), "r1")
    rows = table(spark, config, "images").collect()
    assert len(rows) == 36
    by_group = {}
    for r in rows:
        by_group.setdefault(r["group_key"], set()).add(r["split"])
    assert sorted(by_group) == groups
    for group, splits in by_group.items():
        assert splits == {split_of("", config.ingest.split, group)}
    assert len({s for splits in by_group.values() for s in splits}) > 1  # groups do spread over splits


def test_near_duplicates_follow_their_cluster_split(spark, tmp_path):
    raw = tmp_path / "raw"
    config = make_config(tmp_path)
    # Originals first; then, in a later run, re-encoded and resized copies (different bytes, same picture).
    originals = {}
    for i in range(8):
        originals[i] = write_jpeg(raw / "orig" / f"p{i}.jpg", photo(500 + i, (200, 150)), quality=95)
    run_ingest(spark, config, str(raw), "r1")
    splits = {r["path"].rsplit("/", 1)[1]: r["split"] for r in table(spark, config, "images").collect()}
    for i in range(8):
        img = Image.open(io.BytesIO(originals[i])).resize((160, 120), Image.BILINEAR)
        write_jpeg(raw / "copies" / f"p{i}_small.jpg", img, quality=60)
    counts = run_ingest(spark, config, str(raw), "r2")
    assert counts.ingested == 8 and counts.duplicates == 0  # not byte-identical
    assert counts.near_duplicates["clusters"] == 8
    assert counts.near_duplicates["crossing_splits"] == 0
    rows = {r["path"].rsplit("/", 1)[1]: r for r in table(spark, config, "images").collect()}
    for i in range(8):
        small, orig = rows[f"p{i}_small.jpg"], rows[f"p{i}.jpg"]
        assert small["split"] == splits[f"p{i}.jpg"] == orig["split"]
        assert small["near_dup_cluster"] is not None
        assert imaging.hamming(small["phash"], orig["phash"]) <= config.ingest.near_duplicates.max_distance
    # Unrelated photos are not near-duplicates of each other.
    assert imaging.hamming(rows["p0.jpg"]["phash"], rows["p1.jpg"]["phash"]) > config.ingest.near_duplicates.max_distance


def test_listed_local_files_become_tasks_sized_by_count_and_bytes(spark):
    """The pass over local files takes the driver's listing: several tasks per core, more when the bytes
    call for it, never more tasks than files."""
    from imgshards.ingest.read import LISTED_TASK_BYTES, LISTED_TASKS_PER_CORE, listed_files

    cores = spark.sparkContext.defaultParallelism
    small = {f"file:/x/{i:04d}.jpg": 1000 for i in range(1000)}
    frame = listed_files(spark, small)
    assert frame.rdd.getNumPartitions() == LISTED_TASKS_PER_CORE * cores
    assert sorted(tuple(r) for r in frame.collect()) == sorted(small.items())
    big = {f"file:/x/{i:04d}.jpg": LISTED_TASK_BYTES // 10 for i in range(1000)}
    assert listed_files(spark, big).rdd.getNumPartitions() == 100
    assert listed_files(spark, {"file:/x/one.jpg": 5}).rdd.getNumPartitions() == 1
    assert listed_files(spark, {}).collect() == []


ND_COLUMNS = ("sha256 string, phash long, phash_fine array<long>, path string, split string, label string, "
              "width int, height int")


def _fine(phash: int, inverted: bool = False) -> list:
    """A fine hash that follows the coarse one (4 bits apart per coarse bit: confirmed within the default
    bounds); ``inverted``: its last two words inverted, so that it is more than 100 bits from one that is not."""
    return [phash, phash, ~phash if inverted else phash, ~phash if inverted else phash]


def _row(sha, phash, path, split, fine=None, label=None, size=(400, 300)):
    return (sha, phash, _fine(phash) if fine is None else fine, path, split, label, *size)


# Clustering on the driver (up to near_duplicates.DRIVER_MAX_IMAGES) and in Spark (beyond it): every case
# below runs both ways.
CLUSTERED_ON = {"driver": near_duplicates.DRIVER_MAX_IMAGES, "spark": 0}


def _cluster_rows(spark, rows, live=(), *, on="driver", overrides=()):
    """near_duplicates.clusters over accepted ``rows`` and ``live`` rows:
    ({sha256: (cluster, split, cluster_label, label_example)}, report)."""
    settings = load_config(overrides=list(overrides)).ingest.near_duplicates
    with near_duplicates.clusters(spark, settings, spark.createDataFrame(rows, ND_COLUMNS),
                                  spark.createDataFrame(list(live), ND_COLUMNS),
                                  driver_max=CLUSTERED_ON[on]) as (assigned, report):
        found = {} if assigned is None else {r[0]: tuple(r[1:]) for r in assigned.collect()}
    return found, report


@pytest.mark.parametrize("on", CLUSTERED_ON)
def test_near_duplicate_clusters_split_in_the_configured_proportions(spark, on):
    """A new cluster takes the split of a member picked independently of the split rule: with the smallest
    sha256's split, clusters of 13 near-copies (the benchmark's replicated photos) all landed in train."""
    split = load_config(overrides=[]).ingest.split
    rng = np.random.default_rng(11)
    rows = []
    for c in range(400):
        phash = int(rng.integers(-2**63, 2**63 - 1))  # random hashes are ~32 bits apart: one cluster each
        for m in range(13):
            sha = hashlib.sha256(f"cluster {c} member {m}".encode()).hexdigest()
            rows.append(_row(sha, phash, f"c{c}/m{m}.jpg", split_of(sha, split)))
    assignment, report = _cluster_rows(spark, rows, on=on)
    assert report["clusters"] == 400 and report["images"] == 5200 and report["crossing_splits"] == 0
    assert report["hash_pairs"] == 0  # identical hashes are one node: no pair among the 13 copies
    assert len(assignment) == 5200
    clusters: dict = {}
    for cluster, target, *_ in assignment.values():
        clusters.setdefault(cluster, set()).add(target)
    assert len(clusters) == 400 and all(len(t) == 1 for t in clusters.values())
    shares = {name: sum(t == {name} for t in clusters.values()) / len(clusters) for name in ("train", "val", "test")}
    assert 0.7 < shares["train"] < 0.9 and 0.05 < shares["val"] < 0.15 and 0.05 < shares["test"] < 0.15, shares


@pytest.mark.parametrize("on", CLUSTERED_ON)
def test_near_duplicate_clusters_do_not_chain_and_keep_the_tables_split(spark, on):
    """a–b–c–d, each 5 bits from the next but 10 from the one after: b (most neighbours) is a centre and takes
    a and c; d, whose only neighbour is taken, is no cluster (union-find made all four one). A cluster with
    rows in the table takes their most common split; the cluster id is the smallest sha256 among its members,
    table rows included; a hash far from all others is no cluster."""
    a, b, c, d, far = 0, 0b11111, 0b11111 | (0b11111 << 8), 0b11111 | (0b11111 << 8) | (0b11111 << 16), -1
    live = [_row("0000", a, "old/a1.jpg", "val", label="bee"), _row("0001", a, "old/a2.jpg", "val", label="ant"),
            _row("0002", far, "old/far.jpg", "train", label="ant")]
    rows = [_row("b0", b, "new/b0.jpg", "train", label="ant"), _row("b1", b, "new/b1.jpg", "test", label="bee"),
            _row("c0", c, "new/c0.jpg", "train", label="ant"), _row("d0", d, "new/d0.jpg", "val"),
            _row("lone", 0x5555_5555_5555_5555, "new/lone.jpg", "train")]
    assignment, report = _cluster_rows(spark, rows, live, on=on)
    # the cluster's label is the most common one (ant: a2, b0, c0), with the first path (in order) that has it
    assert assignment == {sha: ("0000", "val", "ant", "new/b0.jpg") for sha in ("b0", "b1", "c0")}
    assert (report["clusters"], report["images"], report["crossing_splits"]) == (1, 3, 0)
    assert report["hash_pairs"] == report["candidate_pairs"] == 3  # a–b, b–c, c–d, each once however many images share a hash
    assert stars([("a", "b"), ("b", "c"), ("c", "d"), ("x", "y")]) == {"b": "b", "a": "b", "c": "b", "d": "d", "x": "x", "y": "x"}


@pytest.mark.parametrize("on", CLUSTERED_ON)
def test_near_duplicate_candidates_need_the_fine_hash_to_agree(spark, on):
    """Two images with the same 64-bit dHash but fine hashes far apart (two different photos sharing a coarse
    hash, as a blank-ish pair does) are a candidate pair, not a cluster; within confirm_distance they are."""
    far_fine = [0x0F0F_0F0F_0F0F_0F0F, 0x00FF_00FF_00FF_00FF, 0x3333_3333_3333_3333, 0x5555_5555_5555_5555]
    rows = [_row("x0", 42, "x0.jpg", "train", [0, 0, 0, 0]), _row("x1", 42, "x1.jpg", "val", far_fine)]
    assignment, report = _cluster_rows(spark, rows, on=on)
    assert assignment == {} and report["candidate_pairs"] == 1 and report["hash_pairs"] == 0
    assignment, report = _cluster_rows(spark, rows, on=on, overrides=["ingest.near_duplicates.confirm_distance=128"])
    assert set(assignment) == {"x0", "x1"} and report["hash_pairs"] == 1


@pytest.mark.parametrize("on", CLUSTERED_ON)
def test_near_duplicate_candidates_need_the_shapes_to_agree(spark, on):
    """The same hashes on a 4:3 image and on a 2:1 one (a different picture with a similar grey layout) are a
    candidate pair, not a cluster; a copy turned by 90 degrees, or 4 % narrower, keeps its shape."""
    rows = [_row("x0", 42, "x0.jpg", "train"), _row("x1", 42, "x1.jpg", "val", size=(400, 200))]
    assignment, report = _cluster_rows(spark, rows, on=on)
    assert assignment == {} and report["candidate_pairs"] == 1 and report["hash_pairs"] == 0
    rows += [_row("x2", 42, "x2.jpg", "val", size=(300, 400)), _row("x3", 42, "x3.jpg", "val", size=(384, 300))]
    assignment, report = _cluster_rows(spark, rows, on=on)
    assert set(assignment) == {"x0", "x2", "x3"} and report["hash_pairs"] == 1  # x0 and x2 are one node


@pytest.mark.parametrize("same_split", [True, False])
def test_near_duplicate_clusters_are_the_same_on_the_driver_and_in_spark(spark, same_split):
    """Random clusters of near hashes (some chained, some crossing splits, some with rows in the table, some
    rejected by their fine hash or their shape, signed hashes both sides of zero): the driver's clusters, splits and report are
    Spark's, and the driver's pairs are every pair within the distances (all pairs compared)."""
    rng = random.Random(7)
    splits = ("train", "val", "test")
    live, rows = [], []
    for c in range(60):
        centre = rng.getrandbits(64)
        for m in range(rng.randint(1, 5)):
            phash = centre
            for _ in range(rng.randint(0, 6)):
                phash ^= 1 << rng.randrange(64)
            phash = phash - 2**64 if phash >= 2**63 else phash  # as a signed long
            fine = _fine(phash, inverted=rng.random() < 0.25)
            size = rng.choice(((400, 300), (300, 400), (390, 300), (400, 200)))
            row = _row(hashlib.sha256(f"{c}/{m}".encode()).hexdigest(), phash, f"c{c:02d}/m{m}.jpg", rng.choice(splits), fine,
                       rng.choice(("ant", "bee", None)), size)
            (live if rng.random() < 0.3 else rows).append(row)
    overrides = [f"ingest.near_duplicates.same_split={str(same_split).lower()}"]
    on_driver = _cluster_rows(spark, rows, live, on="driver", overrides=overrides)
    in_spark = _cluster_rows(spark, rows, live, on="spark", overrides=overrides)
    assert on_driver == in_spark
    report = on_driver[1]
    assert report["clusters"] > 10 and report["hash_pairs"] > 10 and report["candidate_pairs"] > report["hash_pairs"]
    assert report["crossing_splits"] > 0
    settings = load_config(overrides=[]).ingest.near_duplicates
    nodes = {node_key(r[1], r[2], aspect_key(*r[6:])): (r[1], r[2], aspect_key(*r[6:])) for r in live + rows}
    new = {node_key(r[1], r[2], aspect_key(*r[6:])) for r in rows}
    within = {(min(a, b), max(a, b)) for a in new for b in nodes
              if a != b and imaging.hamming(nodes[a][0], nodes[b][0]) <= settings.max_distance}
    confirmed, rejected = near_pairs(new, nodes, settings)
    assert confirmed | rejected == within and not confirmed & rejected
    assert confirmed == {(a, b) for a, b in within
                         if imaging.fine_distance(nodes[a][1], nodes[b][1]) <= settings.confirm_distance
                         and max(nodes[a][2], nodes[b][2]) / min(nodes[a][2], nodes[b][2]) <= 1 + settings.max_aspect_change}


def test_near_duplicates_reported_when_not_moved(spark, tmp_path):
    raw = tmp_path / "raw"
    config = make_config(tmp_path, "ingest.near_duplicates.same_split=false")
    for i in range(12):
        data = write_jpeg(raw / "a" / f"p{i}.jpg", photo(700 + i, (200, 150)), quality=95)
        write_jpeg(raw / "b" / f"p{i}_copy.jpg", Image.open(io.BytesIO(data)), quality=70)
    counts = run_ingest(spark, config, str(raw), "r1")
    rows = {r["path"].rsplit("/", 1)[1]: r["split"] for r in table(spark, config, "images").collect()}
    crossing = sum(rows[f"p{i}.jpg"] != rows[f"p{i}_copy.jpg"] for i in range(12))
    assert counts.near_duplicates["clusters"] == 12
    assert counts.near_duplicates["crossing_splits"] == crossing
    examples = counts.near_duplicates["crossing_examples"]
    assert len(examples) == min(crossing, 5) and [e["cluster"] for e in examples] == sorted(e["cluster"] for e in examples)
    for e in examples:
        assert len(e["paths"]) == 2 and len(e["splits"]) == 2 and e["paths"] == sorted(e["paths"])


def test_oversized_file_is_quarantined_not_a_failure(spark, tmp_path):
    raw = tmp_path / "raw"
    write_jpeg(raw / "x" / "small.jpg", photo(40, (32, 32)))
    write_jpeg(raw / "x" / "big.jpg", photo(41, (800, 800)))
    config = make_config(tmp_path, "ingest.max_bytes=5000")
    counts = run_ingest(spark, config, str(raw), "r1")
    assert counts.quarantine_reasons == {"too_large_bytes": 1} and counts.ingested == 1
    row = table(spark, config, "quarantine").head()
    assert row["path"].endswith("big.jpg") and "max_bytes" in row["detail"]


def test_streaming_two_batches_and_restart_from_checkpoint(spark, tmp_path):
    raw = tmp_path / "raw"
    config = make_config(tmp_path, "ingest.stream.max_files_per_trigger=2")
    for i in range(3):
        write_jpeg(raw / "a" / f"s{i}.jpg", photo(100 + i))
    with open(raw / "a" / "broken.jpg", "wb") as f:
        f.write(b"not a jpeg at all")
    first = run_ingest_stream(spark, config, str(raw), "st1")
    assert first.batches == 2  # 4 files, 2 per trigger
    assert (first.seen, first.ingested, first.quarantined) == (4, 3, 1)

    for i in range(3, 5):
        write_jpeg(raw / "b" / f"s{i}.jpg", photo(100 + i))
    second = run_ingest_stream(spark, config, str(raw), "st2")  # a restart: the checkpoint knows the old files
    assert (second.seen, second.ingested) == (2, 2)

    # A crash after the MERGE but before the checkpoint's commit: the last batch is replayed on restart.
    commits = tmp_path / "warehouse" / "_checkpoints" / "ingest" / "commits"
    last = max(int(name) for name in os.listdir(commits) if name.isdigit())
    os.remove(commits / str(last))
    os.remove(commits / f".{last}.crc")
    replay = run_ingest_stream(spark, config, str(raw), "st3")
    assert replay.ingested == 0 and replay.unchanged == replay.seen > 0

    paths = [r["path"] for r in table(spark, config, "images").collect()]
    assert len(paths) == len(set(paths)) == 5


def test_streaming_survives_a_deleted_file_and_takes_old_copies(spark, tmp_path):
    """A file deleted after the stream planned it (available_now plans every batch at the start) is passed
    over instead of failing every restart; a file copied with its old modification time (cp -p, rsync -a),
    weeks older than the newest seen, is still taken (Spark's default maxFileAge would skip it)."""
    raw = tmp_path / "raw"
    config = make_config(tmp_path, "ingest.stream.max_files_per_trigger=2")
    now = dt.datetime.now().timestamp()
    for i in range(4):
        write_jpeg(raw / "a" / f"s{i}.jpg", photo(300 + i))
        os.utime(raw / "a" / f"s{i}.jpg", (now - 100 + i, now - 100 + i))  # the order the source takes them

    def delete_the_last(totals):
        if totals.batches == 1:
            os.remove(raw / "a" / "s3.jpg")  # planned for the second batch, gone before it reads

    first = run_ingest_stream(spark, config, str(raw), "gone", on_batch=delete_the_last)
    assert (first.batches, first.seen, first.ingested) == (2, 3, 3)
    # The micro-batches' commits carry their run ids (the MERGE runs in the job's session, not the stream's).
    assert {h.get("run_id") for h in tables.history(spark, config.table("images"), 5)} >= {"gone-b0", "gone-b1"}

    write_jpeg(raw / "b" / "old-copy.jpg", photo(400))
    month_ago = now - 30 * 86400
    os.utime(raw / "b" / "old-copy.jpg", (month_ago, month_ago))
    second = run_ingest_stream(spark, config, str(raw), "old")
    assert (second.seen, second.ingested) == (1, 1)


def _manifest(root):
    with open(os.path.join(root, "MANIFEST.tsv")) as f:
        return {row["path"].split("/", 1)[1]: row for row in csv.DictReader(f, delimiter="\t")}


@pytest.mark.shared_data
def test_edge_cases_corpus_every_file_accounted(spark, tmp_path):
    root = shared_dataset("edge-cases")
    manifest = _manifest(root)
    config = make_config(tmp_path, "ingest.extensions=['*']", "ingest.labels.source=none")
    counts = run_ingest(spark, config, root, "edge")
    assert counts.seen == len(manifest) + 1  # + MANIFEST.tsv itself, quarantined as not_an_image
    counts.check()

    ingested = {r["path"].split("/edge-cases/", 1)[1]: r for r in table(spark, config, "images").drop("content").collect()}
    duplicate = {r["path"].split("/edge-cases/", 1)[1] for r in table(spark, config, "duplicates").collect()}
    quarantined = {r["path"].split("/edge-cases/", 1)[1]: r for r in table(spark, config, "quarantine").collect()}
    assert quarantined.pop("MANIFEST.tsv")["reason"] == "not_an_image"
    assert len(ingested) + len(duplicate) + len(quarantined) == len(manifest)
    for path, row in manifest.items():
        assert (path in ingested) + (path in duplicate) + (path in quarantined) == 1, path
        if row["open"] != "ok":
            # Pillow cannot even open it: it must be quarantined at ingest with a reason.
            assert path in quarantined, (path, row["open"])
            assert quarantined[path]["reason"] in imaging.QUARANTINE_REASONS
        if path in quarantined:
            assert quarantined[path]["detail"]
        if path in ingested:
            assert row["open"] == "ok", path
            assert (ingested[path]["width"], ingested[path]["height"]) == (int(row["width"]), int(row["height"]))

    # Preprocess: every ingested image is processed or quarantined at stage preprocess, never a crash;
    # those Pillow could not load never reach `processed`.
    pre = run_preprocess(spark, config, "edge")
    assert pre.processed + pre.quarantined == len(ingested)
    processed = {r["path"].split("/edge-cases/", 1)[1] for r in table(spark, config, "processed").collect()}
    failed = {r["path"].split("/edge-cases/", 1)[1] for r in
              table(spark, config, "quarantine").filter("stage = 'preprocess'").collect()}
    assert processed | failed == set(ingested) and not processed & failed
    for path in ingested:
        if manifest[path]["load"] != "ok":
            assert path in failed, (path, manifest[path]["load"])


def test_probe_keeps_64_bit_hashes_exact_in_a_batch_with_a_failed_file():
    """A damaged file in the same Arrow batch once turned the hash column into float64 and rounded every
    hash above 2**53, so near-duplicate clusters depended on how files fell into batches."""
    import pandas as pd

    from imgshards.config import LabelsConfig
    from imgshards.ingest.read import probe_batches

    rng = np.random.default_rng(3)
    photos = []
    while len(photos) < 3:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        phash = imaging.fingerprint(buffer.getvalue(), 10**8).phash
        if float(phash) != phash:  # not representable as float64
            photos.append((buffer.getvalue(), phash))
    contents = [b"not an image"] + [content for content, _ in photos]
    batch = pd.DataFrame({"path": [f"file:/in/{i}.png" for i in range(4)], "length": [len(c) for c in contents],
                          "content": contents})
    [probed] = list(probe_batches(iter([batch]), base="file:/in", max_pixels=10**8, labels=LabelsConfig(),
                                   group_regex=None, phash=True, crc32=True))
    assert probed["reason"].iloc[0] == "not_an_image" and pd.isna(probed["phash"].iloc[0])
    assert [int(v) for v in probed["phash"].iloc[1:]] == [phash for _, phash in photos]
    assert list(probed["sha256"]) == [hashlib.sha256(c).hexdigest() for c in contents]
    assert [int(v) for v in probed["crc32"]] == [zlib.crc32(c) for c in contents]


def test_copy_mode_never_stores_bytes_other_than_those_hashed(spark, tmp_path, monkeypatch):
    """In copy mode the bytes are read a second time to be written; a file rewritten between the probe and
    that read (caught by the CRC32 of the bytes the probe hashed) is not written under the old sha256: the
    run fails and says so, every stored row's bytes hash to its sha256, and the next run ingests the file."""
    from imgshards.ingest import write as ingest_write

    raw = tmp_path / "raw"
    config = make_config(tmp_path)
    for i in range(3):
        write_jpeg(raw / "cat" / f"{i}.jpg", photo(40 + i))
    write_rows = ingest_write._write_rows

    def rewrite_then_write(*args, **kwargs):
        write_jpeg(raw / "cat" / "1.jpg", photo(50))  # after the probe, before the bytes are read again
        return write_rows(*args, **kwargs)

    monkeypatch.setattr(ingest_write, "_write_rows", rewrite_then_write)
    with pytest.raises(RuntimeError, match="files changed while ingest was reading them"):
        run_ingest(spark, config, str(raw), "r1")
    monkeypatch.setattr(ingest_write, "_write_rows", write_rows)
    stored = table(spark, config, "images").collect()
    assert sorted(r["path"].rsplit("/", 1)[1] for r in stored) == ["0.jpg", "2.jpg"]
    assert all(hashlib.sha256(r["content"]).hexdigest() == r["sha256"] for r in stored)

    again = run_ingest(spark, config, str(raw), "r2")
    assert (again.ingested, again.unchanged) == (1, 2)
    [row] = table(spark, config, "images").filter("path LIKE '%/1.jpg'").collect()
    assert row["sha256"] == hashlib.sha256((raw / "cat" / "1.jpg").read_bytes()).hexdigest()
    assert hashlib.sha256(row["content"]).hexdigest() == row["sha256"]


def test_reference_content_reads_sources_by_path_and_quarantines_changed_ones(spark, tmp_path):
    """ingest.content=reference keeps no bytes in images; preprocess reads each source by path and makes the
    same samples as copy mode; the report still shows near-duplicates (from the processed samples); later a
    source changed since ingest is quarantined as changed_since_ingest (same size or not), one that is gone
    as unreadable, and the others are still made."""
    from imgshards.observe.report.collect import gather

    raw = tmp_path / "raw"
    for i in range(6):
        write_jpeg(raw / ("cat" if i % 2 else "dog") / f"{i}.jpg", photo(10 + i))
    write_jpeg(raw / "dog" / "0-again.jpg", photo(10), quality=60)  # a near-duplicate of 0.jpg
    copy = make_config(tmp_path / "copy")
    reference = make_config(tmp_path / "reference", "ingest.content=reference")
    for config in (copy, reference):
        assert run_ingest(spark, config, str(raw), "r1").ingested == 7
        assert run_preprocess(spark, config, "p1").processed == 7
    images = table(spark, reference, "images")
    assert images.count() == 7 and images.filter("content IS NOT NULL").count() == 0
    assert table(spark, copy, "images").filter("content IS NULL").count() == 0
    made = {r["sha256"]: bytes(r["image"]) for r in table(spark, copy, "processed").collect()}
    assert {r["sha256"]: bytes(r["image"]) for r in table(spark, reference, "processed").collect()} == made
    shown = gather(spark, reference)["near_duplicates"]["shown"]
    assert shown and all(m["thumb"] for cluster in shown for m in cluster["members"])

    same_size = bytearray((raw / "dog" / "0.jpg").read_bytes())
    same_size[len(same_size) // 2] ^= 0xFF
    (raw / "dog" / "0.jpg").write_bytes(bytes(same_size))
    write_jpeg(raw / "cat" / "1.jpg", photo(99), quality=70)
    os.remove(raw / "dog" / "2.jpg")
    again = run_preprocess(spark, make_config(tmp_path / "reference", "ingest.content=reference",
                                              "preprocess.size=48"), "p2")
    assert again.processed == 4
    assert again.quarantine_reasons == {"changed_since_ingest": 2, "unreadable": 1}
    verdicts = {r["path"].rsplit("/", 1)[-1]: (r["reason"], r["detail"])
                for r in table(spark, reference, "quarantine").filter("stage = 'preprocess'").collect()}
    assert {name: reason for name, (reason, _) in verdicts.items()} == {
        "0.jpg": "changed_since_ingest", "1.jpg": "changed_since_ingest", "2.jpg": "unreadable"}
    assert "sha256" in verdicts["0.jpg"][1]
