"""What each reader a trainer uses yields of an export's split, in one shape for comparison:
{sample_id: (label, label_name, sha256, image bytes)}. The readers are the libraries themselves, used as their
docs show (no code of this project reads the shards here)."""
from __future__ import annotations

import io
import json

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
