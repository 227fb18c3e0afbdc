"""The opencv backend (imgshards.imaging.opencv, the default): pixels within a level or so of pil's on real
photos in every resize mode, the same quarantine decisions on every edge case, and every output format.
No Spark."""
from __future__ import annotations

import glob
import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgshards import imaging
from imgshards.config import load_config
from imgshards.imaging import opencv
from imgshards.preprocess.transform import process_series

from helpers import shared_dataset

# Mean absolute difference from pil, in 8-bit levels, on PNG output: the most any one photo may differ,
# and the mean over the photos (measured: 0.6-0.75 median, 3.3 the largest, of 396 photos at 224 px).
PHOTO_MAX = 4.0
PHOTO_MEAN = 1.0


def pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), np.float32)


def both(data: bytes, **settings):
    """(pil's result, opencv's result): PNG bytes, or the quarantine reason."""
    out = []
    for transform in (imaging.process, opencv.process):
        try:
            out.append(transform(data, output_format="png", **settings)[0])
        except imaging.ImageError as e:
            out.append(e.reason)
    return out


@pytest.mark.shared_data
@pytest.mark.parametrize("resize", imaging.RESIZE_MODES)
def test_opencv_is_within_a_level_of_pil_on_photos(resize):
    photos = sorted(glob.glob(os.path.join(shared_dataset("hymenoptera"), "*", "*", "*.jpg")))[::3]
    differences = []
    for path in photos:
        with open(path, "rb") as f:
            pil, cv = both(f.read(), size=224, resize=resize)
        assert pixels(cv).shape == (224, 224, 3)
        differences.append(np.abs(pixels(pil) - pixels(cv)).mean())
    assert max(differences) < PHOTO_MAX and np.mean(differences) < PHOTO_MEAN, (max(differences), np.mean(differences))


@pytest.mark.shared_data
def test_opencv_quarantines_exactly_what_pil_does_on_the_edge_cases():
    root = shared_dataset("edge-cases")
    processed = 0
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if not os.path.isfile(path) or path.endswith("MANIFEST.tsv"):
            continue
        with open(path, "rb") as f:
            pil, cv = both(f.read(), size=224)
        assert type(pil) is type(cv), (path, pil if isinstance(pil, str) else cv)
        if isinstance(pil, str):
            assert pil == cv, path
        else:
            processed += 1
            assert np.abs(pixels(pil) - pixels(cv)).mean() < 3.0, path
    assert processed > 100


@pytest.mark.parametrize("size,source", [(224, (3000, 2000)), (64, (40, 30)), (96, (97, 301))],
                         ids=["large-png-downscale", "upscale", "one-pixel-off"])
def test_opencv_matches_pil_off_the_photo_path(size, source):
    """Non-JPEGs (no DCT scaling: the integer pre-reduction), upscales (Pillow's filter) and near-1 scales
    with a half-pixel box (the cubic warp)."""
    rng = np.random.default_rng(size)
    smooth = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(source, Image.BICUBIC)
    data = io.BytesIO()
    smooth.save(data, "PNG")
    for resize in imaging.RESIZE_MODES:
        pil, cv = both(data.getvalue(), size=size, resize=resize, pad_value=7)
        assert np.abs(pixels(pil) - pixels(cv)).mean() < 1.5, resize


def test_opencv_output_formats_decode_to_the_same_pixels():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)).resize((260, 180))
    data = io.BytesIO()
    img.save(data, "JPEG", quality=95)
    raw, _, _ = opencv.process(data.getvalue(), size=48, output_format="raw")
    png, _, _ = opencv.process(data.getvalue(), size=48, output_format="png")
    jpeg, _, _ = opencv.process(data.getvalue(), size=48, output_format="jpeg", quality=95)
    assert np.array_equal(imaging.decode_rgb(raw), imaging.decode_rgb(png))
    assert imaging.decode_rgb(jpeg).shape == (48, 48, 3) and jpeg[:2] == b"\xff\xd8"
    pil_jpeg, _, _ = imaging.process(data.getvalue(), size=48, output_format="jpeg", quality=95)
    assert np.abs(pixels(jpeg) - pixels(pil_jpeg)).mean() < 3.0  # the same quality and chroma subsampling


def test_opencv_is_the_default_backend_and_each_row_says_so():
    settings = load_config().preprocess
    assert settings.backend == "opencv"
    good = io.BytesIO()
    Image.new("RGB", (90, 60), (200, 30, 10)).save(good, "JPEG")
    result = process_series(pd.Series([good.getvalue(), b"not an image"]), None, settings, 89_478_485)
    assert list(result["backend"]) == ["opencv", "pil"]  # a quarantine row: Pillow judged it
    assert result["reason"].tolist()[1] == "not_an_image" and result["reason"].isna().tolist()[0]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_opencv_decodes_jpegs_to_pillows_pixels_in_every_orientation(orientation, mode):
    """simplejpeg's decode, oriented by the array, is Pillow's decode + exif_transpose to the pixel, at full
    size and at the DCT scale draft mode picks."""
    rng = np.random.default_rng(orientation)
    img = Image.fromarray(rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)).resize((330, 210)).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = io.BytesIO()
    img.save(data, "JPEG", quality=92, exif=exif.tobytes())
    for size, draft in ((200, False), (48, True)):
        opened = imaging.codecs.open_image(data.getvalue(), 89_478_485)
        array, full_size = opencv._decode_jpeg(data.getvalue(), opened, size, "crop", draft)
        expected, pil_full = imaging.codecs.decode_for_output(imaging.codecs.open_image(data.getvalue(), 89_478_485),
                                                              size, "crop", draft)
        assert np.array_equal(array, np.asarray(expected)), (size, draft)
        assert full_size == (pil_full or expected.size)
