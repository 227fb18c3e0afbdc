"""Petastorm datasets written without Petastorm, read by unmodified Petastorm: the export's pickled Unischema
is byte for byte the one Petastorm makes, and Petastorm 0.12.1 and 0.13.1 (make_reader and make_batch_reader,
in the spark35 environment that still has them) read every split of an export written on the default Spark 4
stack sample for sample as the project's loader does. The same from S3: tests/test_s3.py."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import pytest

from imgshards.config import load_config
from imgshards.export.unischema import export_unischema_pickle
from imgshards.jobs.pipeline import run_pipeline
from imgshards.sample import make_sample_dataset

from helpers import loader_samples, read_with_petastorm

pytestmark = pytest.mark.slow

VARIANTS = [(224, "jpeg", "compressed"), (64, "png", "compressed"), (48, "jpeg", "ndarray")]

# Petastorm's own schema for an export, as the project built it while it depended on Petastorm.
_PETASTORM_SCHEMA = """
import sys
import numpy as np
from pyspark.sql.types import IntegerType, LongType, StringType
from petastorm.codecs import CompressedImageCodec, NdarrayCodec, ScalarCodec
from petastorm.unischema import Unischema, UnischemaField
import pickle
size, image_format, codec = int(sys.argv[1]), sys.argv[2], sys.argv[3]
image_codec = CompressedImageCodec(image_format) if codec == "compressed" else NdarrayCodec()
schema = Unischema("ImageSample", [
    UnischemaField("image", np.uint8, (size, size, 3), image_codec, False),
    UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
    UnischemaField("label_name", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("sample_id", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("sha256", np.str_, (), ScalarCodec(StringType()), False),
    UnischemaField("copy", np.int32, (), ScalarCodec(IntegerType()), False),
    UnischemaField("augment_seed", np.int64, (), ScalarCodec(LongType()), True),
])
sys.stdout.write(pickle.dumps(schema).hex())
"""


@pytest.mark.parametrize("size, image_format, codec", VARIANTS)
def test_the_pickled_unischema_is_petastorm_s_own(old_stack, size, image_format, codec):
    result = subprocess.run([old_stack.python, "-c", _PETASTORM_SCHEMA, str(size), image_format, codec],
                            capture_output=True, text=True, timeout=300, check=True)
    assert bytes.fromhex(result.stdout) == export_unischema_pickle(size, image_format, codec)


@pytest.mark.parametrize("codec", ["compressed", "ndarray"])
def test_unmodified_petastorm_reads_a_spark4_export_as_the_loader_does(spark, old_stack, tmp_path, codec):
    make_sample_dataset(str(tmp_path / "raw"), per_class=12, seed=5)
    base = load_config(overrides=["preprocess.size=40", "export.files_per_split=3", f"export.codec={codec}",
                                  "ingest.near_duplicates.enabled=false"])
    config = dataclasses.replace(base, input=str(tmp_path / "raw"), warehouse=str(tmp_path / "warehouse"),
                                 output=str(tmp_path / "shards"), workdir=str(tmp_path))
    assert run_pipeline(spark, config, "compat")["export"]
    expected = loader_samples(config.output)
    assert all(expected.values()), expected
    for version in old_stack.petastorm_versions:
        found = read_with_petastorm(old_stack, version, config.output)
        assert found["version"] == version
        for reader in ("make_reader", "make_batch_reader"):
            assert found[reader] == expected, (version, reader)


def test_the_export_writes_petastorm_s_metadata_keys(spark, tmp_path):
    """What materialize_dataset leaves beside the Parquet files, checked without Petastorm: the Arrow schema
    of the files with the pickled Unischema and the row groups per file (which match the files' footers)."""
    import pyarrow.parquet as pq

    from imgshards.train.loader import read_manifest

    make_sample_dataset(str(tmp_path / "raw"), per_class=6, seed=2)
    base = load_config(overrides=["preprocess.size=32", "export.files_per_split=2",
                                  "ingest.near_duplicates.enabled=false"])
    config = dataclasses.replace(base, input=str(tmp_path / "raw"), warehouse=str(tmp_path / "warehouse"),
                                 output=str(tmp_path / "shards"), workdir=str(tmp_path))
    run_pipeline(spark, config, "keys")
    for split, info in read_manifest(config.output)["splits"].items():
        folder = info["url"].removeprefix("file://")
        metadata = pq.read_schema(os.path.join(folder, "_common_metadata")).metadata
        assert metadata[b"dataset-toolkit.unischema.v1"] == export_unischema_pickle(32, "jpeg", "compressed")
        per_file = json.loads(metadata[b"dataset-toolkit.num_row_groups_per_file.v1"])
        files = sorted(name for name in os.listdir(folder) if name.endswith(".parquet"))
        assert sorted(per_file) == files, split
        for name in files:
            assert per_file[name] == pq.ParquetFile(os.path.join(folder, name)).metadata.num_row_groups
        assert pq.read_schema(os.path.join(folder, files[0])).names == pq.read_schema(
            os.path.join(folder, "_common_metadata")).names
