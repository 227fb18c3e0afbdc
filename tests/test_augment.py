"""Offline augmentation: the copy plan, per-copy parameters from one seed, DALI output that depends only on
the seed, and the whole path (ingest -> preprocess with copies -> export -> loader) on a Spark session."""
from __future__ import annotations

import dataclasses
import io
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgshards.config import AugmentConfig, load_config
from imgshards.imaging.augment import copies_per_image, sample_params
from imgshards.preprocess.transform import Placement, process_series

pytest.importorskip("nvidia.dali")

SIZE = 32


def photo(seed: int, size=(120, 90), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC).convert(mode)


def encoded(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def settings(**augment):
    base = load_config().preprocess
    return dataclasses.replace(base, size=SIZE, output_format="png",
                               augment=dataclasses.replace(base.augment, copies=1, **augment))


def augmented(contents, seeds, preprocess=None, backend="pil"):
    frame = process_series(pd.Series(contents), pd.Series(seeds, dtype="float64"), preprocess or settings(),
                           89_478_485, Placement(backend, None, None))
    assert frame["reason"].isna().all(), list(frame["detail"])
    return list(frame["image"])


def test_copy_plan_balances_classes_up_to_the_largest():
    assert copies_per_image({"a": 10, "b": 4}, copies=2, balance=False) == {"a": (2, 0), "b": (2, 0)}
    # balanced: every class ends at 10 x (1 + copies) samples
    assert copies_per_image({"a": 10, "b": 4, None: 3}, copies=1, balance=True) == {"a": (1, 0), "b": (4, 0), None: (5, 2)}
    assert copies_per_image({"a": 10, "b": 3}, copies=0, balance=True) == {"a": (0, 0), "b": (2, 1)}


def test_parameters_depend_only_on_the_seed():
    config = AugmentConfig(copies=1)
    assert sample_params(7, 640, 480, SIZE, config) == sample_params(7, 640, 480, SIZE, config)
    assert sample_params(7, 640, 480, SIZE, config) != sample_params(8, 640, 480, SIZE, config)
    # turning an op off leaves the other ops' values as they were
    no_color = dataclasses.replace(config, ops=("random_resized_crop", "flip", "rotate", "blur"))
    a, b = sample_params(7, 640, 480, SIZE, config), sample_params(7, 640, 480, SIZE, no_color)
    assert (a.geometry, a.flip, a.angle, a.blur_sigma) == (b.geometry, b.flip, b.angle, b.blur_sigma)
    assert (b.brightness, b.contrast, b.saturation, b.hue) == (1.0, 1.0, 1.0, 0.0)


def test_same_seed_gives_identical_bytes_whatever_the_batch():
    contents = [encoded(photo(i, (100 + 13 * i, 80 + 7 * i))) for i in range(5)]
    seeds = [1000 + i for i in range(5)]
    first = augmented(contents, seeds)
    # another batch order, and mixed with an unaugmented row
    shuffled = augmented(contents[::-1] + [contents[0]], seeds[::-1] + [None])
    assert shuffled[:5][::-1] == first
    assert augmented(contents, [2000 + i for i in range(5)]) != first
    original = shuffled[5]
    assert original != first[0]
    for image in first:
        assert Image.open(io.BytesIO(image)).size == (SIZE, SIZE)


def test_images_dali_cannot_decode_exactly_are_augmented_from_pillows_decode():
    exif = Image.Exif()
    exif[0x0112] = 6
    contents = [encoded(photo(1), exif=exif.tobytes()), encoded(photo(2, mode="RGBA"), "PNG"),
                encoded(photo(3, mode="CMYK")), encoded(photo(4, mode="P"), "GIF")]
    frame = process_series(pd.Series(contents + [b"garbage"]), pd.Series([1.0, 2.0, 3.0, 4.0, 5.0]), settings(),
                           89_478_485, Placement("pil", None, None))
    assert list(frame["backend"][:4]) == ["dali-cpu"] * 4 and frame["reason"][:4].isna().all()
    assert frame["reason"][4] == "not_an_image"


# -- through Spark ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    from imgshards.sample import make_sample_dataset

    root = str(tmp_path_factory.mktemp("raw"))
    make_sample_dataset(root, per_class=8, seed=3)
    return root


def augment_config(work) -> object:
    base = load_config(overrides=[
        f"preprocess.size={SIZE}", "preprocess.resize=letterbox", "preprocess.output_format=raw",
        "export.codec=ndarray", "export.row_group_size_mb=1", "preprocess.augment.copies=1",
        "preprocess.augment.balance_classes=true", "preprocess.augment.seed=11",
    ])
    return dataclasses.replace(base, warehouse=str(work / "warehouse"), output=str(work / "shards"), workdir=str(work))


@pytest.fixture(scope="module")
def augmented_run(spark, raw_root, tmp_path_factory):
    from imgshards.export.run import run_export
    from imgshards.ingest.run import run_ingest
    from imgshards.preprocess.run import run_preprocess

    config = augment_config(tmp_path_factory.mktemp("work"))
    run_ingest(spark, config, raw_root, "aug-1")
    counts = run_preprocess(spark, config, "aug-1")
    export = run_export(spark, config, "aug-1")
    return config, counts, export


def table(spark, config, name):
    return spark.read.format("delta").load(config.table(name).path)


def test_copies_stay_in_their_parents_split_and_balance_the_classes(spark, augmented_run):
    config, counts, _ = augmented_run
    images = {r["sha256"]: r for r in table(spark, config, "images").drop("content").collect()}
    processed = table(spark, config, "processed").drop("image").collect()
    copies = [r for r in processed if r["copy"] > 0]
    assert counts.augmented == len(copies) > 0
    for r in processed:
        parent = images[r["sha256"]]
        assert (r["split"], r["label"]) == (parent["split"], parent["label"])
        assert (r["augment_seed"] is None) == (r["copy"] == 0)
        if r["copy"] > 0:
            assert r["split"] == "train" and r["backend"] == "dali-cpu"
    train = Counter(r["label"] for r in processed if r["split"] == "train")
    largest = Counter(r["label"] for r in images.values() if r["split"] == "train").most_common(1)[0][1]
    assert set(train.values()) == {2 * largest}  # balanced, then one copy's worth more
    assert len({r["augment_seed"] for r in copies}) == len(copies)


def test_rerun_makes_no_new_copies(spark, augmented_run):
    from imgshards.preprocess.run import run_preprocess

    config, first, _ = augmented_run
    again = run_preprocess(spark, config, "aug-2")
    assert again.processed == 0 and again.already_processed == first.processed


def test_another_run_from_scratch_makes_identical_bytes(spark, augmented_run, raw_root, tmp_path_factory):
    from imgshards.ingest.run import run_ingest
    from imgshards.preprocess.run import run_preprocess

    config, _, _ = augmented_run
    other = augment_config(tmp_path_factory.mktemp("again"))
    run_ingest(spark, other, raw_root, "aug-x")
    run_preprocess(spark, other, "aug-x")

    def copies(c):
        return {(r["sha256"], r["copy"]): (r["augment_seed"], bytes(r["image"]))
                for r in table(spark, c, "processed").filter("copy > 0").collect()}

    assert copies(other) == copies(config)


def test_export_and_loader_carry_the_copies(augmented_run):
    from imgshards.train.loader import make_dataloader, read_manifest

    config, counts, export = augmented_run
    manifest = read_manifest(config.output)
    assert manifest["splits"]["train"]["augmented"] == counts.augmented
    assert manifest["splits"]["val"]["augmented"] == manifest["splits"]["test"]["augmented"] == 0
    assert manifest["image"]["codec"] == "ndarray" and manifest["augment_fingerprint"] == config.augment_fingerprint()
    loader = make_dataloader(config.output, "train", batch_size=8, shuffle=False, workers=1, remainder="pad")
    ids, parents = [], Counter()
    for batch in loader:
        assert tuple(batch["image"].shape[1:]) == (3, SIZE, SIZE)
        ids += batch["sample_id"]
        for sample_id, sha in zip(batch["sample_id"], batch["sha256"]):
            assert sample_id == sha or sample_id.startswith(sha + "-")
            parents[sha] += 1
    assert len(ids) == len(set(ids)) == manifest["splits"]["train"]["rows"]
    assert sum(n - 1 for n in parents.values()) == counts.augmented


def test_an_image_that_fails_with_its_copies_is_quarantined_once(spark, tmp_path):
    from imgshards.ingest.run import run_ingest
    from imgshards.preprocess.run import run_preprocess

    raw = tmp_path / "raw" / "cat"
    raw.mkdir(parents=True)
    for i in range(3):
        (raw / f"good{i}.jpg").write_bytes(encoded(photo(i)))
    (raw / "broken.bmp").write_bytes(encoded(photo(9), "BMP")[:-500])  # a sound header, short pixel data
    config = augment_config(tmp_path / "work")
    config = dataclasses.replace(
        config,
        # no perceptual hash at ingest: its decode would catch the damage before preprocess
        ingest=dataclasses.replace(config.ingest,
                                   near_duplicates=dataclasses.replace(config.ingest.near_duplicates, enabled=False)),
        preprocess=dataclasses.replace(config.preprocess, augment=dataclasses.replace(
            config.preprocess.augment, copies=2, balance_classes=False, splits=("train", "val", "test"))))
    ingest = run_ingest(spark, config, str(tmp_path / "raw"), "q-1")
    assert ingest.ingested == 4  # the header probe passes
    counts = run_preprocess(spark, config, "q-1")
    assert counts.processed == 9 and counts.augmented == 6 and counts.quarantined == 3
    rows = table(spark, config, "quarantine").filter("stage = 'preprocess'").collect()
    assert [(r["path"].rsplit("/", 1)[1], r["reason"]) for r in rows] == [("broken.bmp", "truncated")]
