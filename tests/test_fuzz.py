"""Thousands of damaged variants of real photos and of the edge-case corpus (tests/fuzzing.py) through
ingest and preprocess under opencv and dali-cpu (and pil, without Spark): no job fails, every file ends up
in exactly one table, every processed file fully decodes, and no truncated file passes as valid with pixels
missing."""
from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import os
import shutil

import fuzzing
import numpy as np
import pytest
from PIL import Image

from imgshards import imaging
from imgshards.config import load_config
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import run_preprocess

from helpers import shared_dataset

pytest.importorskip("nvidia.dali")

VARIANTS = 2500
SEED = 20261125


def sources() -> dict:
    """Real photos as they are, four of them (shrunk to 160 px) in every format and codec ingest takes,
    and the edge-case files of supported formats that Pillow loads."""
    photos = sorted(glob.glob(os.path.join(shared_dataset("hymenoptera"), "*", "*", "*.jpg")))
    edge = shared_dataset("edge-cases")
    found = {f"photo-{os.path.basename(p)[:-4]}": open(p, "rb").read() for p in photos[::40]}
    for path in photos[5::100]:
        img = Image.open(path)
        img.thumbnail((160, 160))
        found.update({f"{kind}-{os.path.basename(path)[:-4]}": data for kind, data in fuzzing.encodings(img).items()})
    with open(os.path.join(edge, "MANIFEST.tsv")) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["pil_format"] in imaging.SUPPORTED_FORMATS and row["open"] == row["load"] == "ok":
                with open(os.path.join(os.path.dirname(edge), row["path"]), "rb") as image:
                    found["edge-" + os.path.basename(row["path"]).rsplit(".", 1)[0]] = image.read()
    return {name: data for name, data in found.items() if accepted(data)}


def accepted(data: bytes) -> bool:
    """Whole by this pipeline's measure, which some edge cases are not (no JPEG end marker, a bad CRC)."""
    try:
        imaging.probe(data, 1 << 40)
        imaging.fingerprint(data, 1 << 40)
        imaging.decode(data, 1 << 40)
        return True
    except imaging.ImageError:
        return False


def pil_accepts(data: bytes, config) -> bool:
    try:
        imaging.process(data, size=config.preprocess.size, max_pixels=config.ingest.max_pixels)
        return True
    except imaging.ImageError:
        return False


def table(spark, config, name):
    return spark.read.format("delta").load(config.table(name).path)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("hashing", ["true", "false"], ids=["near-dup-hashing", "headers-only"])
def test_damaged_files_never_crash_and_are_never_taken_for_whole(spark, tmp_path, hashing):
    originals = sources()
    variants = fuzzing.variants(originals, VARIANTS, SEED)
    fuzzing.write(variants, str(tmp_path / "raw"))
    by_name = {v.name: v for v in variants}
    # With near-duplicate hashing, ingest decodes every image at 1/8 scale and rejects most damaged pixel
    # data itself; without, it reads headers only and the damage reaches the decoders of preprocess.
    config = load_config(overrides=["preprocess.size=32", "ingest.extensions=['*']", "ingest.labels.source=none",
                                    f"ingest.near_duplicates.enabled={hashing}"])
    config = dataclasses.replace(config, warehouse=str(tmp_path / "opencv"), output=str(tmp_path / "shards"),
                                 workdir=str(tmp_path))

    counts = run_ingest(spark, config, str(tmp_path / "raw"), "fuzz")
    counts.check()
    names = {name: {os.path.basename(r["path"]) for r in table(spark, config, name).select("path").collect()}
             for name in ("images", "duplicates", "quarantine")}
    assert sum(map(len, names.values())) == len(variants)
    for name in by_name:
        assert sum(name in found for found in names.values()) == 1, name
    ingest_reasons = {os.path.basename(r["path"]): r["reason"] for r in table(spark, config, "quarantine").collect()}
    for name, reason in ingest_reasons.items():
        assert reason in imaging.QUARANTINE_REASONS, (name, reason)
    for name in names["images"] | names["duplicates"]:
        assert by_name[name].kind != "oversize", name  # a size past max_pixels never gets in
    for name in by_name:
        if by_name[name].kind == "extension":  # whole data under another format's extension: not damaged
            assert name in names["images"] | names["duplicates"], (name, ingest_reasons.get(name))

    # The same images table preprocessed by each backend (the backend is not part of the settings
    # fingerprint, so each needs its own copy of the warehouse).
    shutil.copytree(tmp_path / "opencv", tmp_path / "dali")
    processed, backends = {}, {}
    for backend, warehouse in (("opencv", "opencv"), ("dali-cpu", "dali")):
        settings = dataclasses.replace(config, warehouse=str(tmp_path / warehouse),
                                       preprocess=dataclasses.replace(config.preprocess, backend=backend))
        pre = run_preprocess(spark, settings, "fuzz-" + backend)
        assert pre.processed + pre.quarantined == len(names["images"])
        made = {os.path.basename(r["path"]) for r in table(spark, settings, "processed").select("path").collect()}
        failed = {os.path.basename(r["path"]) for r in
                  table(spark, settings, "quarantine").filter("stage = 'preprocess'").select("path").collect()}
        assert made | failed == names["images"] and not made & failed
        processed[backend] = made
        backends[backend] = pre.backends
    # DALI decodes until a batch it rejects; from then on that Python worker (reused across tasks and
    # across the tests in this process) hands every batch to Pillow.
    assert set(backends["dali-cpu"]) <= {"dali-cpu on cpu", "pil on cpu"}
    # Pillow judges bad data under every backend, so they accept the same files; pil too, by itself.
    assert processed["opencv"] == processed["dali-cpu"]
    assert processed["opencv"] == {name for name in names["images"] if pil_accepts(by_name[name].data, config)}

    # Every processed file decodes in full; one that was cut short only if it lost nothing.
    kinds = collections.Counter()
    for name in processed["opencv"]:
        variant = by_name[name]
        pixels = np.asarray(imaging.decode(variant.data, config.ingest.max_pixels))
        if variant.kind == "truncate":
            whole = np.asarray(imaging.decode(originals[variant.source], config.ingest.max_pixels))
            assert pixels.shape == whole.shape and np.array_equal(pixels, whole), name
        kinds[variant.kind] += 1
    # The corpus did damage: cut and oversized files are quarantined, most bit flips (in pixel data) are not.
    assert kinds["truncate"] < VARIANTS // 50 and kinds["oversize"] == 0
    assert VARIANTS // 10 < kinds["bitflip"] < VARIANTS // 5
