"""Quality signals: what fingerprint measures (brightness, contrast, sharpness) on real photos and their edits,
and the flags, counts and quarantine that ingest.quality's thresholds make of them through a real ingest."""
from __future__ import annotations

import glob
import io
import os

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from test_ingest import make_config, table

from imgshards import imaging
from imgshards.config import load_config
from imgshards.ingest.run import run_ingest

from helpers import shared_dataset


def _jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def _photos(n: int) -> list:
    paths = sorted(glob.glob(os.path.join(shared_dataset("hymenoptera"), "*", "*", "*.jpg")))[:n]
    return [Image.open(p).convert("RGB") for p in paths]


def test_signals_follow_the_edits_that_make_an_image_unfit():
    """On real photos: blurring lowers sharpness below the default threshold, while darkening and flattening do
    not change it much (it is normalised by contrast); darkening lowers brightness, flattening contrast. A
    blank image has no contrast and no sharpness."""
    q = load_config(overrides=[]).ingest.quality
    for img in _photos(12):
        sharp = imaging.fingerprint(_jpeg(img), 10**9)
        # a blur of about 1.3 px at the 128 px the signal is measured at: 5.5 px on a 500 x 333 photo
        blurred = imaging.fingerprint(_jpeg(img.filter(ImageFilter.GaussianBlur(min(img.size) / 60))), 10**9)
        dark = imaging.fingerprint(_jpeg(ImageEnhance.Brightness(img).enhance(0.15)), 10**9)
        flat = imaging.fingerprint(_jpeg(ImageEnhance.Contrast(img).enhance(0.1)), 10**9)
        assert sharp.sharpness >= q.blurry > blurred.sharpness
        assert sharp.brightness >= q.dark > dark.brightness
        assert sharp.contrast >= q.low_contrast > flat.contrast
        assert 0.5 < dark.sharpness / sharp.sharpness < 2 and 0.5 < flat.sharpness / sharp.sharpness < 2
    blank = imaging.fingerprint(_jpeg(Image.new("RGB", (300, 200), (128, 128, 128))), 10**9)
    assert blank.contrast < 1 and blank.sharpness < 0.01 and abs(blank.brightness - 128) < 2


def test_ingest_stores_the_signals_counts_the_flags_and_quarantines_what_the_settings_name(spark, tmp_path):
    raw = tmp_path / "raw" / "things"
    raw.mkdir(parents=True)
    photos = _photos(4)
    for i, img in enumerate(photos):
        (raw / f"photo{i}.jpg").write_bytes(_jpeg(img))
    (raw / "blank.jpg").write_bytes(_jpeg(Image.new("RGB", (300, 200), (40, 120, 90))))
    # dark, but with contrast enough not to be low_contrast too (darkening lowers both)
    (raw / "dark.jpg").write_bytes(_jpeg(ImageEnhance.Brightness(photos[3].rotate(90, expand=True)).enhance(0.2)))
    (raw / "strip.jpg").write_bytes(_jpeg(photos[1].resize((600, 150))))
    rng = np.random.default_rng(1)
    (raw / "tiny.png").write_bytes(_png(Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))))
    config = make_config(tmp_path, "ingest.quality.quarantine=[low_contrast,small]")
    counts = run_ingest(spark, config, str(tmp_path / "raw"), "r1")
    assert counts.ingested == 6 and counts.quarantine_reasons == {"low_quality": 2}
    # among the images ingested: the quarantined ones are counted as low_quality instead
    assert counts.quality == {"dark": 1, "bright": 0, "low_contrast": 0, "blurry": 0, "small": 0, "odd_aspect": 1}
    details = {r["path"].rsplit("/", 1)[1]: r["detail"] for r in table(spark, config, "quarantine").collect()}
    assert details["blank.jpg"].startswith("low_contrast: contrast ") and "ingest.quality.low_contrast 10" in details["blank.jpg"]
    assert details["tiny.png"].startswith("small: shorter side 20 ")
    rows = {r["path"].rsplit("/", 1)[1]: r for r in table(spark, config, "images").collect()}
    assert rows["dark.jpg"]["brightness"] < 35 < rows["photo0.jpg"]["brightness"]
    assert all(r["sharpness"] is not None and r["contrast"] > 10 for r in rows.values())


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()
