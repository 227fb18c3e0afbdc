"""What the pipeline must never do with hostile or private data: carry location and other metadata of the
source photos into the shards, run a pickle hidden in a dataset's metadata with the arrow reader, or read
files a labels file points at outside the input root."""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import pickle
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageCms

from imgshards.config import load_config
from imgshards.export.run import run_export
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import run_preprocess
from imgshards.train.loader import make_dataloader, read_manifest

from helpers import needs_petastorm

GPS_IFD = 0x8825


def jpeg_with_location(seed: int) -> bytes:
    """A photo-like JPEG carrying EXIF with a GPS position, an ICC profile and an XMP packet."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[GPS_IFD] = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 36.0)}
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><exif:GPSLatitude>52,31.2N</exif:GPSLatitude></rdf:RDF></x:xmpmeta>'
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, icc_profile=icc, xmp=xmp, quality=92)
    return buffer.getvalue()


def jpeg_app_segments(data: bytes) -> list:
    """(marker, first bytes) of every APPn segment before the scan: EXIF and XMP live in APP1, ICC in APP2."""
    assert data[:2] == b"\xff\xd8"
    segments, offset = [], 2
    while offset < len(data):
        marker = data[offset + 1]
        if marker == 0xDA:  # start of scan: no metadata segments after it
            break
        length = int.from_bytes(data[offset + 2:offset + 4], "big")
        if 0xE0 <= marker <= 0xEF:
            segments.append((marker, data[offset + 4:offset + 4 + 12]))
        offset += 2 + length
    return segments


def test_exported_images_carry_no_location_or_other_metadata(spark, tmp_path):
    raw = tmp_path / "raw" / "places"
    raw.mkdir(parents=True)
    for i in range(12):
        data = jpeg_with_location(i)
        assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD)  # the sources do carry a position
        assert any(marker == 0xE1 for marker, _ in jpeg_app_segments(data))
        (raw / f"photo_{i}.jpg").write_bytes(data)
    config = dataclasses.replace(load_config(overrides=["preprocess.size=64"]), warehouse=str(tmp_path / "wh"),
                                 output=str(tmp_path / "shards"), workdir=str(tmp_path))
    run_ingest(spark, config, str(tmp_path / "raw"), "meta")
    run_preprocess(spark, config, "meta")
    run_export(spark, config, "meta")
    manifest = read_manifest(config.output)
    images = []
    for info in manifest["splits"].values():
        if info["rows"]:
            images += pq.read_table(info["url"].removeprefix("file://"), columns=["image"]).column(0).to_pylist()
    assert len(images) == 12
    for data in images:
        opened = Image.open(io.BytesIO(data))
        assert not opened.getexif() and "icc_profile" not in opened.info and "xmp" not in opened.info
        assert [m for m, _ in jpeg_app_segments(data) if m != 0xE0] == []  # JFIF (APP0) only
        assert b"GPS" not in data and b"xmpmeta" not in data


class _Detonator:
    """Unpickling this writes a file: the proof that a reader ran code from a dataset's metadata."""
    # (shutil.copyfile: a harmless global that no allow-list of Petastorm's would admit)

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (shutil.copyfile, (__file__, self.marker))


def _export_with_a_hostile_pickle(spark, tmp_path) -> tuple:
    """An export whose train split's pickled Unischema, when unpickled, writes a marker file."""
    raw = tmp_path / "raw" / "a"
    raw.mkdir(parents=True)
    for i in range(8):
        (raw / f"{i}.jpg").write_bytes(jpeg_with_location(100 + i))
    config = dataclasses.replace(load_config(overrides=["preprocess.size=32", "ingest.split.train=1",
                                                        "ingest.split.val=0", "ingest.split.test=0"]),
                                 warehouse=str(tmp_path / "wh"), output=str(tmp_path / "shards"), workdir=str(tmp_path))
    run_ingest(spark, config, str(tmp_path / "raw"), "p")
    run_preprocess(spark, config, "p")
    run_export(spark, config, "p")
    train = read_manifest(config.output)["splits"]["train"]["url"].removeprefix("file://")
    # Replace Petastorm's pickled Unischema with a hostile pickle, as an untrusted writer could.
    marker = str(tmp_path / "pickle-ran")
    metadata_path = os.path.join(train, "_common_metadata")
    schema = pq.read_schema(metadata_path)
    hostile = {**(schema.metadata or {}), b"dataset-toolkit.unischema.v1": pickle.dumps(_Detonator(marker))}
    pq.write_metadata(schema.with_metadata(hostile), metadata_path)
    return config, marker


def test_the_arrow_reader_never_unpickles_dataset_metadata(spark, tmp_path):
    config, marker = _export_with_a_hostile_pickle(spark, tmp_path)
    loader = make_dataloader(config.output, "train", 4, workers=1)
    assert sum(len(b["sha256"]) for b in loader) == 8
    assert not os.path.exists(marker)  # the arrow backend read every sample and ran nothing


@needs_petastorm
def test_petastorm_refuses_this_pickle(spark, tmp_path):
    config, marker = _export_with_a_hostile_pickle(spark, tmp_path)
    # Petastorm's readers do unpickle it; 0.12.1 does so with an allow-list of globals, which refuses this
    # payload (a wider one may not be refused): exports read with Petastorm must come from trusted writers.
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        list(make_dataloader(config.output, "train", 4, workers=1, backend="petastorm"))
    assert not os.path.exists(marker)


def test_labels_file_entries_outside_the_input_are_reported_never_read(spark, tmp_path):
    root = tmp_path / "input"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.jpg").write_bytes(jpeg_with_location(1))
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_with_location(2))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([["cats/a.jpg", "cat"], ["../secret.jpg", "cat"], [str(outside), "cat"],
                          ["cats/../../secret.jpg", "cat"]])
    config = dataclasses.replace(load_config(overrides=["ingest.labels.source=file", f"ingest.labels.file={labels}"]),
                                 warehouse=str(tmp_path / "wh"), workdir=str(tmp_path))
    counts = run_ingest(spark, config, str(root), "labels")
    assert counts.seen == 1 and counts.ingested == 1
    report = counts.labels_report
    assert report["entries_without_file"] == 3 and report["entries_outside_input"] == 3
    assert sorted(report["entries_outside_input_examples"]) == sorted(["../secret.jpg", str(outside), "cats/../../secret.jpg"])
    paths = [r["path"] for r in spark.read.format("delta").load(config.table("images").path).select("path").collect()]
    assert paths == [f"file:{root}/cats/a.jpg"]
