"""What the pipeline must never do with hostile or private data: carry location and other metadata of the
source photos into the shards, run a pickle hidden in a dataset's metadata (with either loader backend),
decode an exported image other than as the manifest declares it, or read files a labels file points at
outside the input root."""
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
from imgshards.train.untrusted import ExportError, SchemaUnpickler

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
    """Unpickling this writes a file: the proof that a reader ran code from a dataset's metadata. Through
    ``shutil.copyfile``, or through ``builtins.exec``, which Petastorm's own allow-list admits."""

    def __init__(self, marker: str, via: str):
        self.marker, self.via = marker, via

    def __reduce__(self):
        if self.via == "exec":
            return (exec, (f"open({self.marker!r}, 'w').write('ran')",))
        return (shutil.copyfile, (__file__, self.marker))


def _small_export(spark, work, *settings) -> str:
    """An export of 8 photos at 32 px, all in train; returns its root."""
    raw = work / "raw" / "a"
    raw.mkdir(parents=True)
    for i in range(8):
        (raw / f"{i}.jpg").write_bytes(jpeg_with_location(100 + i))
    config = dataclasses.replace(load_config(overrides=["preprocess.size=32", "ingest.split.train=1", "ingest.split.val=0",
                                                        "ingest.split.test=0", *settings]),
                                 warehouse=str(work / "wh"), output=str(work / "shards"), workdir=str(work))
    run_ingest(spark, config, str(work / "raw"), "p")
    run_preprocess(spark, config, "p")
    run_export(spark, config, "p")
    return config.output


@pytest.fixture(scope="module")
def exports(spark, tmp_path_factory):
    """One export per image codec, made once; each test changes a copy (see :func:`_copy`)."""
    return {codec: _small_export(spark, tmp_path_factory.mktemp(codec), f"export.codec={codec}")
            for codec in ("compressed", "ndarray")}


def _copy(root: str, tmp_path) -> tuple:
    """A copy of the export at ``root`` (its manifest names its splits relative to itself): (root, train)."""
    copy = str(tmp_path / "export")
    shutil.copytree(root, copy)
    return copy, read_manifest(copy)["splits"]["train"]["url"].removeprefix("file://")


def _export_with_a_hostile_pickle(exports, tmp_path, via: str = "copyfile") -> tuple:
    """A copy of an export whose train split's pickled Unischema, when unpickled, writes a marker file."""
    root, train = _copy(exports["compressed"], tmp_path)
    # Replace Petastorm's pickled Unischema with a hostile pickle, as an untrusted writer could.
    marker = str(tmp_path / "pickle-ran")
    metadata_path = os.path.join(train, "_common_metadata")
    schema = pq.read_schema(metadata_path)
    hostile = {**(schema.metadata or {}), b"dataset-toolkit.unischema.v1": pickle.dumps(_Detonator(marker, via))}
    pq.write_metadata(schema.with_metadata(hostile), metadata_path)
    return root, marker


def test_the_arrow_reader_never_unpickles_dataset_metadata(exports, tmp_path):
    root, marker = _export_with_a_hostile_pickle(exports, tmp_path, "exec")
    loader = make_dataloader(root, "train", 4, workers=1)
    assert sum(len(b["sha256"]) for b in loader) == 8
    assert not os.path.exists(marker)  # the arrow backend read every sample and ran nothing


@needs_petastorm
@pytest.mark.parametrize("via", ["copyfile", "exec"])
def test_petastorm_refuses_this_pickle(exports, tmp_path, via):
    root, marker = _export_with_a_hostile_pickle(exports, tmp_path, via)
    # Petastorm's readers unpickle it; 0.12.1's own allow-list admits builtins.exec, so the loader's
    # petastorm backend has them unpickle with its allow-list of the classes a Unischema is made of.
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        list(make_dataloader(root, "train", 4, workers=1, backend="petastorm"))
    assert not os.path.exists(marker)


def test_the_schema_unpickler_takes_a_unischema_and_nothing_else(tmp_path):
    from imgshards.export.unischema import export_unischema_pickle

    class Recorder(pickle.Unpickler):
        """Records each global and stands in for it with an inert class."""
        found: set = set()

        def find_class(self, module, name):
            self.found.add((module, name))
            return type(name, (), {"__new__": lambda cls, *args, **kwargs: object.__new__(cls),
                                   "__init__": lambda self, *args, **kwargs: None,
                                   "__setstate__": lambda self, state: None,
                                   "__setitem__": lambda self, key, value: None})

    for codec in ("compressed", "ndarray"):  # every global of what the export writes is admitted ...
        recorder = Recorder(io.BytesIO(export_unischema_pickle(32, "jpeg", codec)))
        recorder.found = found = set()
        recorder.load()
        assert ("petastorm.unischema", "Unischema") in found and len(found) >= 6
        for module, name in sorted(found):
            try:
                SchemaUnpickler(io.BytesIO(b"")).find_class(module, name)
            except pickle.UnpicklingError:
                pytest.fail(f"{module}.{name} refused")
            except ImportError:
                pass  # admitted, then not importable here (Petastorm is on the Spark 3.5 stack only)
    marker = str(tmp_path / "ran")  # ... and code, through any global outside them, is not
    for via in ("copyfile", "exec"):
        with pytest.raises(pickle.UnpicklingError, match="forbidden"):
            SchemaUnpickler(io.BytesIO(pickle.dumps(_Detonator(marker, via)))).load()
    for module, name in (("numpy", "load"), ("pyspark.sql.types", "_parse_datatype_json_string"), ("os", "system")):
        with pytest.raises(pickle.UnpicklingError, match="forbidden"):
            SchemaUnpickler(io.BytesIO(b"")).find_class(module, name)
    assert not os.path.exists(marker)


def _replace_image(train: str, replace) -> None:
    """Rewrite the split's Parquet files with ``replace(index, image bytes) -> bytes`` applied to each row,
    row group by row group (the manifest's row groups stay as they are)."""
    import glob

    import pyarrow as pa

    index = 0
    for path in sorted(glob.glob(os.path.join(train, "*.parquet"))):
        source = pq.ParquetFile(path)
        groups = [source.read_row_group(g) for g in range(source.num_row_groups)]
        with pq.ParquetWriter(path + ".new", source.schema_arrow) as writer:
            for table in groups:
                images = table.column("image").to_pylist()
                new = []
                for image in images:
                    new.append(replace(index, image))
                    index += 1
                column = table.schema.get_field_index("image")
                writer.write_table(table.set_column(column, table.schema.field(column), pa.array(new, pa.binary())))
        os.replace(path + ".new", path)


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n0 0 moveto 32 32 lineto stroke\nshowpage\n"


def _huge_jpeg_header() -> bytes:
    """A JPEG whose frame header claims 60000 x 60000 pixels (about 10 GB decoded), with no such data."""
    data = bytearray(_encoded(Image.new("RGB", (32, 32)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    return bytes(data)


@pytest.mark.parametrize("name, hostile, message", [
    ("a PNG where JPEG is declared", lambda: _encoded(Image.new("RGB", (32, 32)), "PNG"), "not a JPEG"),
    ("an EPS (Ghostscript, where installed)", lambda: _EPS, "not a JPEG"),
    ("another size", lambda: _encoded(Image.new("RGB", (33, 32)), "JPEG"), "33x32"),
    ("a 10 GB frame header", _huge_jpeg_header, "larger than declared|60000x60000"),
    ("a CMYK JPEG", lambda: _encoded(Image.new("CMYK", (32, 32)), "JPEG"), "CMYK"),
    ("bytes that are no image", lambda: b"\x00" * 64, "not a JPEG"),
])
@pytest.mark.parametrize("position", [0, 5])
def test_the_arrow_reader_decodes_only_what_the_manifest_declares(exports, tmp_path, name, hostile, message, position):
    root, train = _copy(exports["compressed"], tmp_path)
    _replace_image(train, lambda i, image: hostile() if i == position else image)
    loader = make_dataloader(root, "train", 4, workers=1, shuffle=False)
    with pytest.raises(ExportError, match=message) as raised:
        list(loader)
    assert "sample" in str(raised.value)


def test_ndarray_exports_are_checked_before_anything_is_allocated(exports, tmp_path):
    root, train = _copy(exports["ndarray"], tmp_path)
    assert list(make_dataloader(root, "train", 8, workers=1))  # as written, it reads
    huge = io.BytesIO()  # a .npy magic and header declaring 10 GB of pixels, and no pixels
    np.lib.format.write_array_header_1_0(huge, {"descr": "|u1", "fortran_order": False, "shape": (60000, 60000, 3)})
    header = huge.getvalue()
    for hostile, message in ((header, r"\(60000, 60000, 3\)"), (pickle.dumps([1]), "not a .npy")):
        _replace_image(train, lambda i, image, hostile=hostile: hostile if i == 2 else image)
        with pytest.raises(ExportError, match=message):
            list(make_dataloader(root, "train", 8, workers=1, shuffle=False))


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
