"""What each reader a trainer uses yields of an export's split, in one shape for comparison:
{sample_id: (label, label_name, sha256, image bytes)}. The readers are the libraries themselves, used as their
docs show (no code of this project reads the shards here)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq


def parquet_samples(split_url: str, filesystem=None) -> dict:
    """The Petastorm dataset's rows, read by pyarrow from its Parquet files (on ``filesystem``: s3a:// and
    s3:// URLs as bucket/key)."""
    path = split_url.split("://", 1)[1] if filesystem is not None else split_url
    table = pq.read_table(path, filesystem=filesystem, columns=["image", "label", "label_name", "sample_id", "sha256"])
    return {row["sample_id"]: (row["label"], row["label_name"], row["sha256"], row["image"])
            for row in table.to_pylist()}


def mds_samples(local: str, remote: str = None, **options) -> dict:
    """streaming.StreamingDataset over the MDS folder (``remote`` streamed into the cache ``local``)."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    dataset = StreamingDataset(local=local, remote=remote, shuffle=False, batch_size=1, **options)
    found = {}
    for sample in dataset:
        image = sample["image"]
        if isinstance(image, np.ndarray):
            buffer = io.BytesIO()
            np.save(buffer, image)
            image = buffer.getvalue()
        found[sample["sample_id"]] = (sample["label"], sample["label_name"], sample["sha256"], image)
    return found


def _from_webdataset(sample: dict) -> tuple:
    meta = json.loads(sample["json"])
    image = next(sample[key] for key in ("jpg", "png", "npy") if key in sample)
    assert int(sample["cls"]) == meta["label"], sample["__key__"]
    return sample["__key__"], (meta["label"], meta["label_name"], meta["sha256"], bytes(image))


def webdataset_samples(urls) -> dict:
    """webdataset.WebDataset over the shard URLs, undecoded (the members' bytes)."""
    import webdataset as wds

    return dict(_from_webdataset(sample) for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def wids_samples(index: str, cache_dir: str) -> dict:
    """wids.ShardListDataset over the shard index, indexed sample by sample, undecoded."""
    import wids

    dataset = wids.ShardListDataset(index, transformations=[], cache_dir=cache_dir)
    found = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        plain = {key.lstrip("."): (value.read() if hasattr(value, "read") else value) for key, value in sample.items()}
        key, value = _from_webdataset(plain)
        found[key] = value
    return found


def local_path(url: str) -> str:
    """The path of a manifest's file:// URL."""
    assert url.startswith("file://"), url
    return url[len("file://"):]


def every_format(split: dict, cache: str) -> dict:
    """{reader: samples} of one split of a local export (its entry in ``read_manifest``), by every reader of
    each format it holds; ``cache`` is a folder for the readers' caches."""
    found = {"petastorm": parquet_samples(local_path(split["url"]))}
    formats = split.get("formats", {})
    if "mds" in formats:  # the export as the remote: StreamingDataset decompresses shards into its local folder
        found["mds"] = mds_samples(local=os.path.join(cache, "mds"), remote=local_path(formats["mds"]["url"]))
    if "webdataset" in formats:
        folder = local_path(formats["webdataset"]["url"])
        found["webdataset"] = webdataset_samples(f"{folder}/{formats['webdataset']['pattern']}")
        found["wids"] = wids_samples(os.path.join(folder, formats["webdataset"]["index"]), os.path.join(cache, "wids"))
    return found


def mds_ddp_epoch(remote, local: str, out: str, batches: int, env: dict = None) -> tuple:
    """tests/mds_ddp.py as two gloo ranks (processes, as torchrun starts them) over the MDS split ``remote``
    (None: ``local`` holds it) with the cache ``local``: ``batches`` batches of two per rank, the loader's state
    saved, then a resume to the end of the epoch. Returns (first, resumed): each rank's sample ids per phase."""
    from helpers import free_port

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mds_ddp.py")
    base = {**os.environ, **(env or {}), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    for phase in ("first", "resume"):
        base["MASTER_PORT"] = str(free_port())
        ranks = [subprocess.Popen([sys.executable, script, phase, remote or "-", local, out, str(batches)],
                                  env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
        try:
            for rank in ranks:
                output, _ = rank.communicate(timeout=300)
                assert rank.returncode == 0, output[-3000:]
        finally:  # a rank that failed leaves the other waiting for it: never leave it running
            for rank in ranks:
                rank.kill()
                rank.wait()

    def seen(phase: str, rank: int) -> list:
        with open(os.path.join(out, f"{phase}-{rank}.json")) as f:
            return json.load(f)

    return [seen("first", r) for r in (0, 1)], [seen("resume", r) for r in (0, 1)]


def assert_one_epoch(first: list, resumed: list, ids: set, batches: int) -> None:
    """Two ranks read ``batches`` batches of two each, each its own samples, and with the resume every sample
    of ``ids``, repeating none but StreamingDataset's padding (up to ranks x batch - 1 samples)."""
    assert all(len(rank) == 2 * batches for rank in first), first
    assert set(first[0]).isdisjoint(first[1])
    every = [i for rank in first + resumed for i in rank]
    assert set(every) == ids
    assert len(ids) <= len(every) < len(ids) + 2 * 2
