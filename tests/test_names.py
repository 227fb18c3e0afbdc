"""Any name a POSIX file system allows, and symbolic links, in a local input: every file is listed and then
ingested under its own name or quarantined with a reason, exported and read back; links are followed as
ingest.follow_links says, with loops detected and no escape from the input; nothing crashes the job."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import unicodedata

import numpy as np
import pytest
from PIL import Image

from imgshards.config import load_config
from imgshards.delta import tables
from imgshards.export.run import run_export
from imgshards.ingest.run import run_ingest
from imgshards.io import storage
from imgshards.jobs import get_job
from imgshards.jobs.contract import prepare_storage
from imgshards.preprocess.run import run_preprocess
from imgshards.train.loader import make_dataloader

# Every byte but "/" and NUL may be in a name: spaces, URL and glob characters, a colon (which Hadoop's
# paths take for a scheme), a newline, a leading dash, 255 bytes, one name in NFC and in NFD (two files).
NAMES = [b"with space.jpg", b"percent%20.jpg", b"hash#1.jpg", b"query?.jpg", b"colon:x.jpg", b"new\nline.jpg",
         b"-leading-dash.jpg", b"x" * 251 + b".jpg", unicodedata.normalize("NFC", "caf\u00e9.jpg").encode(),
         unicodedata.normalize("NFD", "caf\u00e9.jpg").encode(), b"back\\slash.jpg", b"star*.jpg", b"brackets[1].jpg",
         b"braces{a,b}.jpg", b"quote'\".jpg", b"tab\there.jpg", "\u732b.jpg".encode()]
NOT_UTF8 = b"caf\xe9-latin1.jpg"
FOLDERS = [b"cats", "dogs & more %2F".encode()]


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def corpus(tmp_path):
    """The input (bytes paths throughout) and what each file should become."""
    root = os.fsencode(tmp_path / "raw")
    outside = os.fsencode(tmp_path / "outside")
    os.makedirs(os.path.join(outside, b"folder"))
    with open(os.path.join(outside, b"secret.jpg"), "wb") as f:
        f.write(_jpeg(999))
    with open(os.path.join(outside, b"folder", b"also-secret.jpg"), "wb") as f:
        f.write(_jpeg(998))
    written = {}
    for i, folder in enumerate(FOLDERS):
        os.makedirs(os.path.join(root, folder))
        for j, name in enumerate(NAMES + [NOT_UTF8]):
            data = _jpeg(100 * i + j)
            with open(os.path.join(root, folder, name), "wb") as f:
                f.write(data)
            written[os.path.join(root, folder, name)] = data
    cats = os.path.join(root, b"cats")
    os.symlink(b"..", os.path.join(cats, b"loop"))                               # back into the input
    os.symlink(os.path.join(outside, b"secret.jpg"), os.path.join(cats, b"outside.jpg"))
    os.symlink(os.path.join(outside, b"folder"), os.path.join(cats, b"outside-folder"))
    os.symlink(b"missing.jpg", os.path.join(cats, b"dangling.jpg"))
    os.symlink(b"self.jpg", os.path.join(cats, b"self.jpg"))                     # a link to itself
    os.symlink(os.path.join(cats, NAMES[6]), os.path.join(cats, b"inside-link.jpg"))  # a file inside: followed
    return root, written


def _config(tmp_path, *settings):
    return dataclasses.replace(load_config(overrides=["preprocess.size=24", *settings]),
                               warehouse=str(tmp_path / "wh"), output=str(tmp_path / "shards"), workdir=str(tmp_path))


def test_every_name_is_ingested_under_its_own_name_or_quarantined_and_links_stay_inside(spark, corpus, tmp_path):
    root, written = corpus
    config = _config(tmp_path)
    counts = run_ingest(spark, config, os.fsdecode(root), "names")
    counts.check()
    images = {r["path"]: r for r in tables.table_frame(spark, config.table("images")).collect()}
    quarantine = {r["path"]: r for r in tables.table_frame(spark, config.table("quarantine")).collect()}

    # Every UTF-8 name is in the table under exactly its own name, with its own bytes and its folder's label.
    for path, data in written.items():
        if path.endswith(NOT_UTF8):
            continue
        row = images[f"file:{path.decode()}"]
        assert row["content"] == data and row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["label"] == os.path.basename(os.path.dirname(path)).decode()
    # The link to a file inside the input is followed: the same bytes under the link's name, a duplicate.
    [duplicate] = tables.table_frame(spark, config.table("duplicates")).collect()
    assert duplicate["path"].endswith("/cats/inside-link.jpg") and duplicate["duplicate_of"].endswith("/cats/-leading-dash.jpg")
    # What cannot be read as a file of the input is quarantined with its reason, never read.
    reasons = {path.rsplit("/", 1)[1]: row["reason"] for path, row in quarantine.items()}
    assert reasons == {"loop": "link_loop", "outside.jpg": "link_outside_input", "outside-folder": "link_outside_input",
                       "dangling.jpg": "broken_link", "self.jpg": "broken_link",
                       "caf\\xe9-latin1.jpg": "name_not_utf8"}
    assert counts.quarantine_reasons == {"broken_link": 2, "link_loop": 1, "link_outside_input": 2, "name_not_utf8": 2}
    assert not any("secret" in path for path in images)

    # Exported and read back: every ingested image is a sample of the export.
    run_preprocess(spark, config, "names")
    run_export(spark, config, "names")
    read = {sha for split in ("train", "val", "test")
            for batch in make_dataloader(config.output, split, 4, workers=1, shuffle=False) for sha in batch["sha256"]}
    assert read == {row["sha256"] for row in images.values()}

    # A re-run finds every name unchanged (the listing digest holds any name), and adds nothing.
    again = run_ingest(spark, config, os.fsdecode(root), "names-again")
    assert again.ingested == 0 and again.seen == counts.seen


@pytest.mark.parametrize("follow, expected", [
    ("none", {"loop": "link_not_followed", "outside.jpg": "link_not_followed", "outside-folder": "link_not_followed",
              "dangling.jpg": "link_not_followed", "self.jpg": "link_not_followed", "inside-link.jpg": "link_not_followed"}),
    ("all", {"loop": "link_loop", "dangling.jpg": "broken_link", "self.jpg": "broken_link"}),
])
def test_follow_links_none_and_all(corpus, follow, expected):
    root, _ = corpus
    listing = list(storage._walk_local("file:" + os.fsdecode(root), follow))
    found = {f.relative.rsplit("/", 1)[1]: f.reason for f in listing if f.reason and f.reason != "name_not_utf8"}
    assert found == expected
    paths = [f.path for f in listing]
    assert any("also-secret.jpg" in p for p in paths) == (follow == "all")  # through the link, under its name
    assert len(paths) == len(set(paths))


def test_a_file_gone_while_listed_and_a_folder_that_cannot_be_listed(tmp_path, monkeypatch):
    """Races with the file system (as root, permissions do not stop a listing): a file deleted between
    the folder's listing and its size, and a folder whose listing fails, are listed as unreadable."""
    root = tmp_path / "raw"
    (root / "a").mkdir(parents=True)
    (root / "locked").mkdir()
    for name in ("keep.jpg", "gone.jpg"):
        (root / "a" / name).write_bytes(_jpeg(1))
    scandir = os.scandir

    class Racing:
        def __init__(self, folder):
            if str(folder).endswith("locked"):
                raise PermissionError(13, "Permission denied", str(folder))
            self.scan = scandir(folder)

        def __enter__(self):
            entries = list(self.scan.__enter__())
            if (root / "a" / "gone.jpg").exists() and any(e.name == "gone.jpg" for e in entries):
                (root / "a" / "gone.jpg").unlink()  # after the listing, before its size
            return iter(entries)

        def __exit__(self, *exc):
            return self.scan.__exit__(*exc)

    monkeypatch.setattr(storage.os, "scandir", Racing)
    listing = {f.relative: (f.reason, f.detail) for f in storage._walk_local(f"file:{root}")}
    assert listing["a/keep.jpg"] == (None, None)
    assert listing["a/gone.jpg"][0] == "unreadable" and "gone" in listing["a/gone.jpg"][1]
    assert listing["locked"][0] == "unreadable" and "Permission denied" in listing["locked"][1]


def test_every_name_in_a_bucket_is_ingested_exported_and_read_back(spark, s3_endpoint, tmp_path):
    """The same names as S3 keys (any UTF-8 up to 1,024 bytes): ingested through Spark's reader and S3A
    under their own names, exported to the bucket and read back by the loader. (Not the newline: the test
    server, moto, answers 404 to a key with one.)"""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="names")
    written = {}
    for i, folder in enumerate(FOLDERS):
        for j, name in enumerate(n for n in NAMES if b"\n" not in n):
            key = f"raw/{folder.decode()}/{name.decode()}"
            written[key] = _jpeg(1000 + 100 * i + j)
            client.put_object(Bucket="names", Key=key, Body=written[key])
    config = dataclasses.replace(
        load_config(overrides=["preprocess.size=24", f"storage.s3.endpoint={s3_endpoint}"]),
        input="s3a://names/raw", warehouse=str(tmp_path / "wh"), output="s3a://names/shards", workdir=str(tmp_path))
    prepare_storage(spark, config, get_job("pipeline").locations)
    counts = run_ingest(spark, config, config.input, "s3-names")
    images = {r["path"]: r for r in tables.table_frame(spark, config.table("images")).collect()}
    assert (counts.ingested, counts.quarantined) == (len(written), 0), counts
    for key, data in written.items():
        row = images[f"s3a://names/{key}"]
        assert row["content"] == data and row["label"] == key.split("/")[1]

    run_preprocess(spark, config, "s3-names")
    run_export(spark, config, "s3-names")
    read = {sha for split in ("train", "val", "test")
            for batch in make_dataloader(config.output, split, 4, workers=1, shuffle=False, s3_endpoint=s3_endpoint)
            for sha in batch["sha256"]}
    assert read == {hashlib.sha256(data).hexdigest() for data in written.values()}
