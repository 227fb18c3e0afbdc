"""Read every split of an export with unmodified Petastorm, in the spark35 environment that still has it
(tests/test_petastorm_compat.py runs this with .venv-spark35's Python; PYTHONPATH picks Petastorm 0.13.1 over
the 0.12.1 installed there). Prints JSON: the Petastorm version, and per reader (make_reader, which decodes
through the dataset's pickled Unischema and codecs, and make_batch_reader, which hands the stored columns) and
split, each sample's fields with a SHA-256 of its decoded pixels.

    python tests/petastorm_reader.py EXPORT_ROOT [S3_ENDPOINT]
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys

import numpy as np
import petastorm
from petastorm import make_batch_reader, make_reader

from imgshards.imaging import decode_rgb
from imgshards.io.petastorm_fs import petastorm_location
from imgshards.train.loader import read_manifest

FIELDS = ("label", "label_name", "sha256")  # what the project's loader hands beside the pixels


def pixels_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


def read_export(root: str, endpoint: str | None) -> dict:
    manifest = read_manifest(root, endpoint)
    found: dict = {"version": petastorm.__version__, "make_reader": {}, "make_batch_reader": {}}
    for split, info in manifest["splits"].items():
        url, factory = petastorm_location(info["url"], endpoint)  # object stores: a pyarrow.fs file system
        filesystem = factory() if factory else None
        samples = found["make_reader"][split] = {}
        with make_reader(url, num_epochs=1, workers_count=1, shuffle_row_groups=False,
                         filesystem=filesystem) as reader:
            for row in reader:
                samples[row.sample_id] = {**{f: _plain(getattr(row, f)) for f in FIELDS},
                                          "pixels": pixels_digest(row.image), "shape": list(row.image.shape)}
        samples = found["make_batch_reader"][split] = {}
        with make_batch_reader(url, num_epochs=1, workers_count=1, shuffle_row_groups=False,
                               filesystem=filesystem) as reader:
            for batch in reader:
                for i, sample_id in enumerate(batch.sample_id):
                    image = decode_rgb(bytes(batch.image[i]))
                    samples[sample_id] = {**{f: _plain(getattr(batch, f)[i]) for f in FIELDS},
                                          "pixels": pixels_digest(image), "shape": list(image.shape)}
    return found


def _plain(value):
    """numpy scalars and bytes as JSON's own types."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):  # Petastorm 0.13 prints "Cache cleanup complete." as it goes
        found = read_export(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    json.dump(found, sys.stdout)
