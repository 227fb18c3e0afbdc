"""The Petastorm dataset of one split, written without Petastorm: Spark's Parquet write with Petastorm's row
group size, then the ``_common_metadata`` that ``petastorm.etl.dataset_metadata.materialize_dataset`` would add
(the footer's Arrow schema with the pickled Unischema and the row groups per file, see
:mod:`imgshards.export.unischema`); the ndarray codec's decode; and the row groups the loader shards by."""
from __future__ import annotations

import json
import os
from typing import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from imgshards import imaging
from imgshards.export.unischema import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY
from imgshards.io import storage

COMMON_METADATA = "_common_metadata"


def dataset_url(path: str) -> str:
    """Petastorm wants URLs: a bare local path becomes file://."""
    return path if "://" in path else "file://" + path


def write_dataset(spark: SparkSession, rows: DataFrame, url: str, unischema: bytes, row_group_size_mb: int
                  ) -> tuple[list, int]:
    """Write ``rows`` as the Petastorm dataset at ``url`` (replacing what is there): Parquet files with row
    groups of ``row_group_size_mb`` (a write option, as Petastorm sets ``parquet.block.size``), then
    ``_common_metadata`` as Petastorm's add_to_dataset_metadata writes it: the first file's Arrow schema and its
    key-value metadata (Spark's row metadata among them), plus the two keys Petastorm's readers look for.
    Returns the row groups in file order ([{file, index, rows}], what the loader shards by) and the
    bytes of the Parquet files."""
    import pyarrow.parquet as pq

    rows.write.mode("overwrite").option("parquet.block.size", row_group_size_mb * 1024 * 1024).parquet(url)
    fs, root = storage.arrow_fs(spark, url)
    groups, per_file, schema, size = _footers(fs, root, url)
    keys = dict(schema.metadata or {})
    keys[UNISCHEMA_KEY] = unischema
    keys[ROW_GROUPS_PER_FILE_KEY] = json.dumps(per_file).encode()
    with fs.open_output_stream(f"{root}/{COMMON_METADATA}") as out:
        pq.write_metadata(schema.with_metadata(keys), out)
    return groups, size


def decode_to_npy(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body for the ndarray codec: JPEG/PNG bytes -> np.save bytes of the RGB uint8 array."""
    for batch in batches:
        yield batch.assign(image=[imaging.encode(imaging.decode_rgb(data), "raw", 0) for data in batch["image"]])


def _footers(fs, root: str, url: str) -> tuple:
    """(row groups, row groups per file name, the first file's Arrow schema, bytes) of the Parquet files in
    ``root``, from their footers: one read per file (the split's ``export.files_per_split`` files)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=False))
             if i.is_file and i.path.endswith(".parquet")]
    if not infos:
        raise RuntimeError(f"{url}: the write left no Parquet file")
    groups, per_file, schema = [], {}, None
    for path in sorted(i.path for i in infos):
        with fs.open_input_file(path) as f:
            metadata = pq.ParquetFile(f).metadata
        schema = schema or metadata.schema.to_arrow_schema()
        per_file[os.path.basename(path)] = metadata.num_row_groups
        for index in range(metadata.num_row_groups):
            groups.append({"file": os.path.basename(path), "index": index, "rows": metadata.row_group(index).num_rows})
    return groups, per_file, schema, sum(i.size for i in infos)
