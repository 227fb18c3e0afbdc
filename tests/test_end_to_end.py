"""ingest -> preprocess -> export on generated images (damaged ones included) with the shared local[2]
session, then the shards read back through Petastorm into torch tensors and checked pixel by pixel
against an independent PIL computation."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from imgshards.config import load_config
from imgshards.delta import run_state
from imgshards.export.run import run_export
from imgshards.ingest.rules import split_of
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import run_preprocess
from imgshards.sample import make_sample_dataset
from imgshards.train.loader import IMAGENET_MEAN, IMAGENET_STD, make_dataloader

SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("raw"))
    manifest = make_sample_dataset(root, per_class=10, seed=7)
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return root, manifest, files


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    base = load_config(overrides=[f"preprocess.size={SIZE}", "preprocess.output_format=png", "export.row_group_size_mb=1",
                                 # exact decode by Pillow throughout, so pixels can be held to a tight tolerance
                                 # (draft mode and the opencv backend have tests of their own)
                                 "preprocess.draft=false", "preprocess.backend=pil"])
    return dataclasses.replace(base, warehouse=str(work / "warehouse"), output=str(work / "shards"), workdir=str(work))


@pytest.fixture(scope="module")
def pipeline_run(spark, dataset, config):
    root, _, _ = dataset
    ingest = run_ingest(spark, config, root, "run-1")
    preprocess = run_preprocess(spark, config, "run-1")
    export = run_export(spark, config, "run-1")
    return ingest, preprocess, export


def relative(path: str, root: str) -> str:
    """'file:/tmp/.../raw0/circle/x.jpg' -> 'circle/x.jpg'."""
    return path.split(root.rstrip("/") + "/", 1)[1]


def reference_pixels(data: bytes) -> np.ndarray:
    """Independent expectation: full decode, orientation, RGB on white, shorter side to SIZE, center crop."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    elif img.mode == "I;16":
        img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    center_square = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(img.resize((SIZE, SIZE), Image.BICUBIC, box=center_square), dtype=np.float32)


def test_ingest_accounts_for_every_file(spark, pipeline_run, dataset, config):
    ingest, _, _ = pipeline_run
    _, manifest, files = dataset
    assert ingest.seen == len(files) == manifest.files
    assert ingest.ingested == manifest.images
    assert ingest.duplicates == manifest.duplicates
    assert ingest.label_conflicts.get("duplicate") == manifest.label_conflicts
    assert ingest.quarantined == len(manifest.damaged)
    assert ingest.skipped_hidden == manifest.hidden
    assert ingest.skipped_non_image == manifest.non_image
    assert ingest.quarantine_reasons == dict(Counter(manifest.damaged.values()))

    quarantine = spark.read.format("delta").load(config.table("quarantine").path).collect()
    by_name = {relative(r["path"], dataset[0]): r for r in quarantine}
    assert {k: r["reason"] for k, r in by_name.items()} == manifest.damaged
    assert all(r["stage"] == "ingest" and r["detail"] for r in quarantine)

    duplicates = spark.read.format("delta").load(config.table("duplicates").path).collect()
    assert len(duplicates) == manifest.duplicates
    images = {r["path"]: r["sha256"] for r in spark.read.format("delta").load(config.table("images").path).collect()}
    for r in duplicates:
        assert r["path"] not in images
        assert images[r["duplicate_of"]] == r["sha256"]  # points at the ingested copy of the same content


def test_images_table_has_header_fields_and_stable_splits(spark, pipeline_run, dataset, config):
    _, manifest, files = dataset
    rows = spark.read.format("delta").load(config.table("images").path).drop("content").collect()
    assert len(rows) == manifest.images
    assert Counter(r["label"] for r in rows) == manifest.per_class
    for r in rows:
        data = files[relative(r["path"], dataset[0])]
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert r["size_bytes"] == len(data)
        with Image.open(io.BytesIO(data)) as img:
            assert (r["format"], r["width"], r["height"]) == (img.format, img.size[0], img.size[1])
        assert r["split"] == split_of(r["sha256"], config.ingest.split)


def test_shards_read_back_into_torch_match_independent_pixels(pipeline_run, dataset, config):
    import torch

    _, preprocess, export = pipeline_run
    _, manifest, files = dataset
    by_sha = {hashlib.sha256(d).hexdigest(): d for d in files.values() if d}
    assert preprocess.processed == manifest.images and preprocess.quarantined == 0

    with open(os.path.join(config.output, "manifest.json")) as f:
        written = json.load(f)
    with open(os.path.join(config.output, "classes.json")) as f:
        classes = [c["name"] for c in json.load(f)["classes"]]
    assert classes == sorted(manifest.per_class)
    assert written["source"]["version"] == export.source_version
    assert written["config_fingerprint"] == config.output_fingerprint()

    seen = Counter()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for split, info in written["splits"].items():
        rows = 0
        loader = make_dataloader(config.output, split, batch_size=8, shuffle=False, workers=1)
        for batch in loader:
            images, labels = batch["image"], batch["label"]
            assert images.dtype == torch.float32 and images.shape[1:] == (3, SIZE, SIZE)
            assert labels.dtype == torch.int64
            pixels = (images * std + mean) * 255.0  # undo the normalization
            for i, sha in enumerate(batch["sha256"]):
                expected = reference_pixels(by_sha[sha])
                got = pixels[i].permute(1, 2, 0).numpy()
                # PNG output is lossless; the tolerance covers Pillow's reducing_gap shortcut.
                assert np.abs(got - expected).mean() < 1.0, sha
                assert classes[labels[i]] == batch["label_name"][i]
                assert split_of(sha, config.ingest.split) == split
                seen[batch["label_name"][i]] += 1
            rows += len(labels)
        assert rows == info["rows"]
    assert seen == manifest.per_class


def test_normalization_statistics_are_those_of_the_train_split_pixels(pipeline_run, config):
    """The manifest's channel mean and std (computed beside the split writes) against numpy over every
    pixel of the exported train split, decoded independently from the shards' image bytes."""
    import pyarrow.parquet as pq

    with open(os.path.join(config.output, "manifest.json")) as f:
        written = json.load(f)
    train = pq.read_table(os.path.join(config.output, written["splits"]["train"]["path"]), columns=["image"])
    pixels = np.concatenate([np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64).reshape(-1, 3)
                             for data in train.column("image").to_pylist()]) / 255.0
    stats = written["normalization"]
    assert stats["pixels"] == len(pixels) == written["splits"]["train"]["rows"] * SIZE * SIZE
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), atol=1e-9)


def test_rerun_adds_nothing(spark, pipeline_run, dataset, config):
    root, manifest, _ = dataset
    again = run_ingest(spark, config, root, "run-2")
    assert again.ingested == 0 and again.updated == 0
    assert again.unchanged == manifest.images
    assert again.duplicates == manifest.duplicates
    assert again.quarantined == len(manifest.damaged)
    assert spark.read.format("delta").load(config.table("images").path).count() == manifest.images
    assert spark.read.format("delta").load(config.table("quarantine").path).count() == len(manifest.damaged)
    assert spark.read.format("delta").load(config.table("duplicates").path).count() == manifest.duplicates
    pre = run_preprocess(spark, config, "run-2")
    assert pre.processed == 0 and pre.already_processed == manifest.images
    assert spark.read.format("delta").load(config.table("processed").path).count() == manifest.images


def test_pipeline_rerun_commits_nothing_and_keeps_the_export_until_something_changes(spark, config, tmp_path):
    from imgshards.delta.tables import latest_version
    from imgshards.jobs.pipeline import run_pipeline

    raw = tmp_path / "raw"
    make_sample_dataset(str(raw), per_class=3, seed=8)
    own = dataclasses.replace(config, input=str(raw), warehouse=str(tmp_path / "warehouse"), output=str(tmp_path / "shards"),
                              workdir=str(tmp_path))
    first = run_pipeline(spark, own, "first")
    assert not first["export"]["kept"] and first["export"]["version_dir"].endswith("v-first")
    names = ("images", "quarantine", "duplicates", "processed")
    versions = {name: latest_version(spark, own.table(name).path) for name in names}
    assert first["ingest"]["quarantined"] and first["ingest"]["duplicates"], "the re-run must meet rows it could rewrite"

    tracker = spark.sparkContext.statusTracker()
    last_job = max(tracker.getJobIdsForGroup(), default=-1)
    again = run_pipeline(spark, own, "again")
    # Listing, table versions and the stored state say nothing changed: not one Spark job (run_state).
    assert max(tracker.getJobIdsForGroup(), default=-1) == last_job
    assert again["ingest"]["read_bytes"] == 0
    assert again["preprocess"]["already_processed"] == sum(first["export"]["rows"].values())
    assert "again" in open(again["report"]).read()
    assert again["export"]["kept"] and again["export"]["version_dir"] == first["export"]["version_dir"]
    assert again["export"]["rows"] == first["export"]["rows"]
    assert {name: latest_version(spark, own.table(name).path) for name in names} == versions  # no empty commits
    with open(os.path.join(own.output, "manifest.json")) as f:
        assert json.load(f)["run_id"] == "first"

    Image.new("RGB", (40, 30), (200, 10, 10)).save(raw / "new.png")
    changed = run_pipeline(spark, own, "changed")
    assert not changed["export"]["kept"] and changed["export"]["version_dir"].endswith("v-changed")
    assert sum(changed["export"]["rows"].values()) == sum(first["export"]["rows"].values()) + 1
    assert run_state.load(spark, own, "report")["versions"] == {
        **{name: latest_version(spark, own.table(name).path) for name in (*names, "label_conflicts")}, "forgotten": None}


def test_batches_are_bounded_by_bytes_and_pixels():
    from imgshards.preprocess.run import BATCH_BYTES, BATCH_PIXELS, batch_records

    assert batch_records(150_000, 500 * 375) == 64  # small photos: the row cap
    assert batch_records(8_000_000, 24_000_000) == BATCH_PIXELS // 24_000_000 == 5  # 24 Mpx: decoded size rules
    assert batch_records(BATCH_BYTES // 3, 1000) == 3  # big files of few pixels: encoded size rules
    assert batch_records(None, None) == 64 and batch_records(2**31, 10**9) == 1  # empty table; one huge image
    # Spark 4 bounds the bytes itself (ARROW_BATCH_BYTES): the rows then bound the decoded pixels only.
    assert batch_records(None, 1000) == 64 and batch_records(None, 24_000_000) == 5


def test_spark_4_cuts_the_arrow_batches_of_a_pandas_udf_by_bytes(spark):
    """What preprocess relies on where Spark has ARROW_BATCH_BYTES: rows of ~7.5 MB each, at most 64 rows a
    batch and 32 MB, reach the UDF in batches that end once past 32 MB (5 rows), not 64 rows."""
    from pyspark.sql import functions as F

    from imgshards.delta.tables import temporary_conf
    from imgshards.preprocess.run import ARROW_BATCH_BYTES

    if int(spark.version.split(".")[0]) < 4:
        pytest.skip(f"Spark {spark.version} bounds Arrow batches by rows only")
    rows = spark.range(0, 20, numPartitions=1).select(F.expr("unbase64(repeat('AAAA', 2500000))").alias("b"))

    def lengths(batches):
        for batch in batches:
            yield pd.DataFrame({"n": [len(batch)]})

    with temporary_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", "64"), \
            temporary_conf(spark, ARROW_BATCH_BYTES, str(32 * 1024 * 1024)):
        assert [r.n for r in rows.mapInPandas(lengths, "n long").collect()] == [5, 5, 5, 5]


def test_a_table_from_an_older_version_is_named_not_written(spark, tmp_path):
    from pyspark.sql.types import StringType, StructField, StructType

    from imgshards.delta.tables import TableVersionError, ensure_table
    from imgshards.schemas import PROCESSED_SCHEMA

    path = str(tmp_path / "processed")
    spark.createDataFrame([], StructType([StructField("sha256", StringType())])).write.format("delta").save(path)
    with pytest.raises(TableVersionError, match=r"lacks the columns \['copy'"):
        ensure_table(spark, path, PROCESSED_SCHEMA)


def test_an_images_table_from_before_the_fine_hash_gets_its_new_columns(spark, tmp_path):
    """`images` written before the fine hash and the quality signals: ingest adds those columns (null on the old
    rows, which take no part in near-duplicate checks) and writes its new rows with them."""
    from pyspark.sql.types import StructType

    from imgshards.schemas import IMAGES_ADDED_COLUMNS, IMAGES_SCHEMA

    config = dataclasses.replace(load_config(overrides=[]), warehouse=str(tmp_path / "warehouse"),
                                 output=str(tmp_path / "shards"), workdir=str(tmp_path))
    old = StructType([f for f in IMAGES_SCHEMA.fields if f.name not in IMAGES_ADDED_COLUMNS])
    spark.createDataFrame([], old).write.format("delta").save(config.table("images").path)
    raw = tmp_path / "raw" / "cats"
    raw.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 48), (60 * i, 90, 200)).save(raw / f"{i}.jpg")
    assert run_ingest(spark, config, str(tmp_path / "raw"), "r1").ingested == 3
    rows = spark.read.format("delta").load(config.table("images").path).collect()
    assert len(rows) == 3 and all(len(r["phash_fine"]) == 4 and r["brightness"] is not None for r in rows)
