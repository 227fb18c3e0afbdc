"""export.formats: one export written as Petastorm, Mosaic Streaming (MDS) and WebDataset shards, read back by
the unmodified readers (pyarrow, streaming.StreamingDataset, webdataset.WebDataset, wids.ShardListDataset) and
the project's loader with the same samples per split; StreamingDataset's own DDP partitioning and mid-epoch
resume over two ranks; the settings checked. On S3: tests/test_s3.py; two exports at once: tests/test_publish.py."""
from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imgshards.config import ConfigError, load_config
from imgshards.export import mds
from imgshards.export.run import run_export
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import run_preprocess
from imgshards.sample import make_sample_dataset
from imgshards.train.loader import read_manifest
from imgshards.train.untrusted import image_decoder

from format_readers import assert_one_epoch, every_format, local_path, mds_ddp_epoch, mds_samples, parquet_samples
from helpers import ROOT, loader_samples

ALL_FORMATS = "export.formats=[petastorm,mds,webdataset]"
MIN_SHARDS = 4


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory):
    """Tables ready to export (ingest and preprocess done once)."""
    work = tmp_path_factory.mktemp("formats")
    make_sample_dataset(str(work / "raw"), per_class=8, seed=23)
    config = dataclasses.replace(load_config(overrides=["preprocess.size=32"]), warehouse=str(work / "wh"),
                                 output=str(work / "unused"), workdir=str(work))
    run_ingest(spark, config, str(work / "raw"), "f")
    run_preprocess(spark, config, "f")
    return config, work


def export(spark, tables, name: str, *overrides: str) -> str:
    """An export of the tables with ``overrides`` into its own output; returns the output."""
    config, work = tables
    output = str(work / name)
    exporting = dataclasses.replace(
        load_config(overrides=["preprocess.size=32", ALL_FORMATS, f"export.min_shards={MIN_SHARDS}", *overrides]),
        warehouse=config.warehouse, output=output, workdir=config.workdir)
    run_export(spark, exporting, name)
    return output


@pytest.fixture(scope="module")
def compressed(spark, tables):
    return export(spark, tables, "compressed")


def check_formats_agree(output: str, cache) -> dict:
    manifest = read_manifest(output)
    assert manifest["formats"] == ["petastorm", "mds", "webdataset"]
    for split, info in manifest["splits"].items():
        readers = every_format(info, str(cache / split))
        parquet = readers.pop("petastorm")
        assert len(parquet) == info["rows"] > 0, split
        assert sorted(readers) == ["mds", "webdataset", "wids"]
        for reader, samples in readers.items():
            assert samples == parquet, (split, reader)
        for fmt, entry in info["formats"].items():
            # at least min_shards shards (one per sample below that), every file counted in the manifest
            assert entry["shards"] == max(min(MIN_SHARDS, info["rows"]), 1), (split, fmt, entry)
            folder = local_path(entry["url"])
            files = glob.glob(os.path.join(folder, "*.mds*" if fmt == "mds" else "*.tar"))
            assert sorted(entry["files"]) == sorted(map(os.path.basename, files)), (split, fmt)
            assert len(files) == entry["shards"] and sum(map(os.path.getsize, files)) == entry["bytes"], (split, fmt)
            assert entry["samples"] == info["rows"], (split, fmt)
    return manifest


def test_every_reader_of_every_format_yields_the_petastorm_splits_samples(compressed, tmp_path):
    manifest = check_formats_agree(compressed, tmp_path)
    version = os.path.join(compressed, manifest["version_dir"])
    assert not glob.glob(os.path.join(version, "**", "*.attempt-*"), recursive=True)
    with open(os.path.join(version, "webdataset", "train", "index.wids.json")) as f:
        index = json.load(f)
    assert index["wids_version"] == 1 and all("/" not in shard["url"] for shard in index["shardlist"])


def test_the_projects_loader_reads_what_the_shards_hold(compressed):
    """The loader's decoded pixels are those of the image bytes in the MDS shards."""
    manifest = read_manifest(compressed)
    decode = image_decoder(manifest["image"])
    loaded = loader_samples(compressed)
    for split, info in manifest["splits"].items():
        shards = mds_samples(local=local_path(info["formats"]["mds"]["url"]))
        expected = {sample_id: {"label": label, "label_name": name, "sha256": sha256,
                                "pixels": hashlib.sha256(decode(image).tobytes()).hexdigest(), "shape": [32, 32, 3]}
                    for sample_id, (label, name, sha256, image) in shards.items()}
        assert loaded[split] == expected, split


def test_arrays_with_zstd_compression_read_the_same(spark, tables, tmp_path):
    output = export(spark, tables, "arrays", "export.codec=ndarray", "export.mds_compression=zstd:5",
                    "export.shard_size_mb=1")
    manifest = check_formats_agree(output, tmp_path)
    train = manifest["splits"]["train"]["formats"]
    assert train["mds"]["compression"] == "zstd:5"
    assert os.path.exists(os.path.join(local_path(train["mds"]["url"]), "shard.00000.mds.zstd"))
    assert os.path.exists(os.path.join(local_path(train["webdataset"]["url"]), "train-000000.tar"))


def test_streaming_ddp_over_two_ranks_with_a_mid_epoch_resume(compressed, tmp_path):
    """Two ranks (torch.distributed, gloo) read the train split with StreamingDataset's own partitioning;
    a stop after two batches and a resume from the loader's state_dict read every sample of the epoch."""
    train = read_manifest(compressed)["splits"]["train"]
    first, resumed = mds_ddp_epoch(None, local_path(train["formats"]["mds"]["url"]), str(tmp_path), 2)
    assert_one_epoch(first, resumed, set(parquet_samples(local_path(train["url"]))), 2)


@pytest.mark.parametrize("shape, compression", [(None, None), (None, "zstd:5"), (None, "gz"), ((4, 3, 3), None)])
def test_mds_shards_are_what_mdswriter_writes(shape, compression, tmp_path):
    """The job's own MDS encoder against streaming.MDSWriter on the same samples: the same index and the same
    shard bytes (gzip's header carries the time, so its shards are compared decompressed)."""
    from streaming import MDSWriter

    rng = np.random.default_rng(5)
    columns = mds.columns(shape)
    samples = [{"image": rng.integers(0, 256, shape, dtype=np.uint8) if shape else rng.bytes(int(rng.integers(0, 900))),
                "label": int(rng.integers(-1, 5)), "label_name": ["", "ants", "bées", "x" * 300][i % 4],
                "sample_id": f"{i:064x}", "sha256": f"{i * 7:064x}"} for i in range(40)]
    with MDSWriter(out=str(tmp_path), columns=columns, compression=compression, size_limit=1 << 20) as writer:
        for sample in samples:
            writer.write(sample)
    encoder = mds.ShardEncoder(columns, 1 << 20, compression)
    for sample in samples:
        encoder.add(sample)
    data, entry = encoder.finish(0)
    assert json.loads(mds.index_json([entry])) == json.loads((tmp_path / mds.INDEX_FILE).read_text())
    theirs = (tmp_path / mds.shard_file(entry)).read_bytes()
    if compression == "gz":
        data, theirs = gzip.decompress(data), gzip.decompress(theirs)
    assert data == theirs


@pytest.mark.parametrize("setting, named", [
    ("export.formats=[mds]", "export.formats"),
    ("export.formats=[petastorm,tfrecord]", "export.formats"),
    ("export.formats=[petastorm,mds,mds]", "export.formats"),
    ("export.shard_size_mb=0", "export.shard_size_mb"),
    ("export.shard_size_mb=4096", "export.shard_size_mb"),
    ("export.min_shards=0", "export.min_shards"),
    ("export.mds_compression=lz4", "export.mds_compression"),
    ("export.mds_compression=zstd:99", "export.mds_compression"),
    ("export.mds_compression=gz:x", "export.mds_compression"),
])
def test_a_bad_format_setting_fails_naming_it(setting, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(overrides=[setting])


@pytest.mark.parametrize("fmt", ["mds", "webdataset"])
def test_the_training_example_trains_from_each_format(compressed, fmt):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train_example.py"), "--shards", compressed, "--format", fmt,
         "--epochs", "2", "--batch-size", "4", "--workers", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_manifest(compressed)["splits"]["train"]["rows"]
    epochs = [line.split() for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2, result.stdout
    for words in epochs:  # "epoch N: B batches, mean loss L"
        assert int(words[2]) == rows // 4 and float(words[-1]) > 0, result.stdout
