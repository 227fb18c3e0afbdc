"""The Petastorm dataset of one split: Petastorm's metadata around Spark's Parquet write, the ndarray codec's
decode, and the row groups the loader shards by."""
from __future__ import annotations

import os
from typing import Iterator

import pandas as pd
from pyspark.sql import SparkSession

from imgshards import imaging
from imgshards.io import storage


def dataset_url(path: str) -> str:
    """Petastorm wants URLs: a bare local path becomes file://."""
    return path if "://" in path else "file://" + path


def materialize(spark: SparkSession, url: str, schema, row_group_size_mb: int):
    """Petastorm's ``materialize_dataset`` for ``url``, object stores included (imgshards.io.petastorm_fs)."""
    from petastorm.etl.dataset_metadata import materialize_dataset

    from imgshards.io.petastorm_fs import petastorm_location

    location, factory = petastorm_location(url, *storage.s3_settings(spark))
    return materialize_dataset(spark, location, schema, row_group_size_mb, filesystem_factory=factory)


def decode_to_npy(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body for the ndarray codec: JPEG/PNG bytes -> np.save bytes of the RGB uint8 array."""
    for batch in batches:
        yield batch.assign(image=[imaging.encode(imaging.decode_rgb(data), "raw", 0) for data in batch["image"]])


def row_groups(spark: SparkSession, url: str) -> tuple[list, int]:
    """The Parquet row groups of a written split, in file order ([{file, index, rows}]), and the bytes
    of its Parquet files."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = storage.arrow_fs(spark, url)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    files = sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet"))
    groups = []
    for path in files:
        with fs.open_input_file(path) as f:
            metadata = pq.ParquetFile(f).metadata
        for index in range(metadata.num_row_groups):
            groups.append({"file": os.path.basename(path), "index": index, "rows": metadata.row_group(index).num_rows})
    return groups, sum(i.size for i in infos if i.is_file and i.path.endswith(".parquet"))
