"""The training-side reader: exact DDP coverage with equal batch counts, deterministic shuffling,
resumable epochs, both backends (petastorm where the stack has it: scripts/test.sh --stack spark35), atomic
re-export, other readers, and a loader that imports no Spark or Petastorm."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from imgshards.config import load_config
from imgshards.export.run import run_export
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import run_preprocess
from imgshards.sample import make_sample_dataset
from imgshards.train.loader import ShardedImageLoader, make_dataloader, read_manifest

from helpers import ROOT, needs_petastorm


@pytest.fixture(scope="module")
def export(spark, tmp_path_factory):
    work = tmp_path_factory.mktemp("loader")
    make_sample_dataset(str(work / "raw"), per_class=40, seed=3)
    base = load_config(overrides=["preprocess.size=32", "export.files_per_split=5", "export.row_group_size_mb=1",
                                  "ingest.near_duplicates.enabled=false"])
    config = dataclasses.replace(base, warehouse=str(work / "warehouse"), output=str(work / "shards"), workdir=str(work))
    run_ingest(spark, config, str(work / "raw"), "l1")
    run_preprocess(spark, config, "l1")
    run_export(spark, config, "l1")
    return config


def shas(loader) -> list:
    return [sha for batch in loader for sha in batch["sha256"]]


def all_shas(config, split="train") -> list:
    import pyarrow.parquet as pq

    url = read_manifest(config.output)["splits"][split]["url"]
    return pq.read_table(url[len("file://"):], columns=["sha256"]).column(0).to_pylist()


def planned(rows_per_group: list, *, rank: int, world: int, remainder: str = "drop", shuffle_buffer: int = 7):
    """A loader over a split of these row groups, from the manifest alone (planning reads no file)."""
    manifest = {"image": {"height": 8, "width": 8, "channels": 3, "codec": "compressed", "format": "jpeg"},
                "splits": {"train": {"url": "file:///nowhere", "rows": sum(rows_per_group), "row_groups": [
                    {"file": f"part-{i // 100}.parquet", "index": i % 100, "rows": n} for i, n in enumerate(rows_per_group)]}}}
    return ShardedImageLoader(manifest, "train", 16, shuffle=True, seed=5, epoch=2, cur_shard=rank, shard_count=world,
                              transform=None, workers=1, backend="arrow", remainder=remainder,
                              shuffle_buffer=shuffle_buffer, collate=False)


@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_plans_cover_the_split_and_resume_at_any_position(remainder):
    groups = [13, 1, 40, 7, 22, 9]  # 92 rows
    plans = [list(planned(groups, rank=r, world=3, remainder=remainder).plan()) for r in range(3)]
    assert len({len(p) for p in plans}) == 1
    every = Counter(itertools.chain.from_iterable(plans))
    rows = {(g, row) for g, n in enumerate(groups) for row in range(n)}
    if remainder == "drop":  # 92 // 3 = 30 per rank: two rows left out, none twice
        assert len(every) == 90 and set(every) <= rows and max(every.values()) == 1
    else:  # 31 per rank: every row, one repeated
        assert set(every) == rows and sum(every.values()) == 93
    loader = planned(groups, rank=1, world=3, remainder=remainder)
    for start in (0, 1, 6, 7, 8, 29, 30):
        assert list(loader.plan(start)) == plans[1][start:]


def test_plan_memory_does_not_grow_with_the_split():
    def peak_bytes(rows: int) -> int:
        loader = planned([1000] * (rows // 1000), rank=3, world=8, shuffle_buffer=1024)
        tracemalloc.start()
        resumed = loader.plan(loader.samples_per_shard // 2)  # a resume half way through the epoch
        taken = list(itertools.islice(resumed, 4096))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(taken) == 4096
        return peak

    small, large = peak_bytes(100_000), peak_bytes(10_000_000)
    # One id per sample would be ~700 MB for 10 M rows; the plan holds one run per row group (10,000 here).
    assert large < small + 3_000_000, (small, large)


def test_manifest_counts_equal_rows_read(export):
    manifest = read_manifest(export.output)
    for split, info in manifest["splits"].items():
        assert len(all_shas(export, split)) == info["rows"] == sum(g["rows"] for g in info["row_groups"])
        assert sum(info["per_class"].values()) == info["rows"]
    assert len(manifest["splits"]["train"]["row_groups"]) >= 4
    assert manifest["normalization"]["mean"] and len(manifest["normalization"]["std"]) == 3
    assert manifest["schema"]["image"]["shape"] == [32, 32, 3]
    for key in ("package_version", "created_at", "config_fingerprint", "source"):
        assert key in manifest


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_exact_coverage_and_equal_batches(export, world, remainder):
    everything = all_shas(export)
    n = len(everything)
    per_rank, batches = [], []
    for rank in range(world):
        loader = make_dataloader(export.output, "train", 16, seed=1, cur_shard=rank, shard_count=world,
                                 remainder=remainder, collate=False, workers=1)
        got = [len(b["sha256"]) for b in loader]
        loader.set_epoch(0)
        per_rank.append(shas(loader))
        batches.append(len(got))
        assert len(got) == len(loader)
    assert len(set(batches)) == 1  # every rank the same number of batches: DDP cannot hang
    assert len({len(r) for r in per_rank}) == 1
    union = [s for r in per_rank for s in r]
    if remainder == "drop":
        assert len(union) == len(set(union)) == n - n % world  # no sample twice
        assert set(union) <= set(everything)
    else:
        assert set(union) == set(everything)
        assert len(union) == world * -(-n // world)
        assert max(Counter(union).values()) <= 2


def test_same_seed_same_order_next_epoch_different(export):
    def order(seed, epoch):
        return shas(make_dataloader(export.output, "train", 8, seed=seed, epoch=epoch, collate=False, workers=1))

    assert order(5, 0) == order(5, 0)
    assert order(5, 0) != order(5, 1)
    assert sorted(order(5, 0)) == sorted(order(5, 1))
    assert order(5, 0) != order(6, 0)
    # Without shuffling the order is the written order, the same every epoch.
    loader = make_dataloader(export.output, "train", 8, shuffle=False, collate=False, workers=1)
    first, second = shas(loader), shas(loader)  # the second pass is epoch 1
    assert first == second and loader.epoch == 2


@pytest.mark.parametrize("backend", ["arrow", pytest.param("petastorm", marks=needs_petastorm)])
def test_resume_mid_epoch(export, backend):
    full = make_dataloader(export.output, "train", 8, seed=2, epoch=3, backend=backend, collate=False, workers=1,
                           cur_shard=1, shard_count=2)
    expected = shas(full)
    loader = make_dataloader(export.output, "train", 8, seed=2, epoch=3, backend=backend, collate=False, workers=1,
                             cur_shard=1, shard_count=2)
    before = []
    for i, batch in enumerate(loader):
        before += batch["sha256"]
        if i == 2:
            break
    state = json.loads(json.dumps(loader.state_dict()))  # a checkpoint survives serialization
    resumed = make_dataloader(export.output, "train", 8, seed=2, backend=backend, collate=False, workers=1,
                              cur_shard=1, shard_count=2)
    resumed.load_state_dict(state)
    after = shas(resumed)
    assert not set(before) & set(after)
    assert sorted(before + after) == sorted(expected)
    if backend == "arrow":
        assert before + after == expected  # same order, too
    # The state names the export version; a loader on another version refuses it (its plan differs).
    assert state["export"] == read_manifest(export.output)["version_dir"]
    other = make_dataloader(export.output, "train", 8, seed=2, backend=backend, collate=False, workers=1,
                            cur_shard=1, shard_count=2)
    other.manifest = {**other.manifest, "version_dir": "v-republished"}
    with pytest.raises(ValueError, match="export version"):
        other.load_state_dict(state)
    resumed_there = make_dataloader(os.path.join(export.output, state["export"]), "train", 8, seed=2,
                                    backend=backend, collate=False, workers=1, cur_shard=1, shard_count=2)
    resumed_there.load_state_dict(state)  # the version's own folder resumes it
    assert shas(resumed_there) == after


@needs_petastorm
def test_both_backends_yield_the_same_samples(export):
    for rank in range(2):
        kwargs = dict(seed=4, cur_shard=rank, shard_count=2, collate=False, workers=2)
        arrow = {}
        for batch in make_dataloader(export.output, "val", 4, backend="arrow", **kwargs):
            arrow.update(zip(batch["sha256"], zip(batch["image"], batch["label"])))
        petastorm = {}
        for batch in make_dataloader(export.output, "val", 4, backend="petastorm", **kwargs):
            petastorm.update(zip(batch["sha256"], zip(batch["image"], batch["label"])))
        assert arrow.keys() == petastorm.keys() and arrow
        for sha, (image, label) in arrow.items():
            assert label == petastorm[sha][1]
            np.testing.assert_allclose(image, petastorm[sha][0], atol=1e-5)


def test_reexport_while_a_reader_holds_the_old_one(spark, export):
    loader = make_dataloader(export.output, "train", 8, seed=0, collate=False, workers=1)
    old_url = loader.url
    first = []
    iterator = iter(loader)
    first += next(iterator)["sha256"]
    run_export(spark, dataclasses.replace(export, export=dataclasses.replace(export.export, shuffle_seed=9)), "l2")
    new_url = read_manifest(export.output)["splits"]["train"]["url"]
    assert new_url != old_url
    for batch in iterator:  # the old version is still whole
        first += batch["sha256"]
    assert sorted(first) == sorted(all_shas(export))
    assert os.path.isdir(old_url[len("file://"):])


def test_other_readers_read_the_shards(export):
    """pyarrow reads a split as plain Parquet (Petastorm's own readers: tests/test_petastorm_compat.py)."""
    import pyarrow.parquet as pq

    manifest = read_manifest(export.output)
    url = manifest["splits"]["val"]["url"]
    frame = pq.read_table(url[len("file://"):]).to_pandas()
    assert len(frame) == manifest["splits"]["val"]["rows"]
    assert set(frame.columns) == {"image", "label", "label_name", "sample_id", "sha256", "copy", "augment_seed"}
    assert (frame["sample_id"] == frame["sha256"]).all() and (frame["copy"] == 0).all()  # no augmentation here


def test_the_loader_imports_no_spark_or_petastorm(export):
    """A trainer's process needs neither: the loader reads with pyarrow (numpy 2 and a current pyarrow on the
    default stack; numpy 1 and pyarrow 14 where scripts/test.sh --stack spark35 runs this)."""
    code = f"""
import sys
from imgshards.train.loader import make_dataloader
loader = make_dataloader({export.output!r}, 'train', 16, seed=1, cur_shard=0, shard_count=2)
rows = sum(len(b['sha256']) for b in loader)
assert 'petastorm' not in sys.modules and 'pyspark' not in sys.modules, sorted(sys.modules)
print('rows', rows, 'batches', len(loader))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = make_dataloader(export.output, "train", 16, seed=1, cur_shard=0, shard_count=2)
    assert f"rows {expected.samples_per_shard} batches {len(expected)}" in result.stdout


@pytest.mark.slow
def test_torchrun_two_ranks_ddp_example(export, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29531",
         os.path.join(ROOT, "scripts", "train_example.py"), "--shards", export.output, "--epochs", "2",
         "--batch-size", "8"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2, result.stdout
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert all(np.isfinite(losses))
    assert losses[1] < losses[0], losses  # seeded: the same losses every run
    assert "world 2" in result.stdout
