"""Unit tests of the pure image functions on generated images."""
from __future__ import annotations

import io
import os
import re

import fuzzing
import numpy as np
import pytest
from PIL import Image

from imgshards import imaging
from imgshards.sample import png_header_only

from helpers import ROOT

MAX_PIXELS = 89_478_485


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: orientation is visible."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[: height // 2, : width // 2] = (255, 0, 0)
    arr[: height // 2, width // 2 :] = (0, 255, 0)
    arr[height // 2 :, : width // 2] = (0, 0, 255)
    arr[height // 2 :, width // 2 :] = (255, 255, 255)
    return Image.fromarray(arr)


def corner_colors(arr: np.ndarray) -> list:
    h, w = arr.shape[:2]
    pts = [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
    return [tuple(int(round(c / 255.0)) * 255 for c in arr[y, x]) for y, x in pts]


RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def test_probe_reads_header():
    info = imaging.probe(encode(quadrants(120, 80), "PNG"), MAX_PIXELS)
    assert (info.format, info.width, info.height) == ("PNG", 120, 80)


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (1, [RED, GREEN, BLUE, WHITE]),
        (2, [GREEN, RED, WHITE, BLUE]),  # mirrored horizontally
        (3, [WHITE, BLUE, GREEN, RED]),  # rotated 180
        (6, [BLUE, RED, WHITE, GREEN]),  # rotated 90 clockwise to display
        (8, [GREEN, WHITE, RED, BLUE]),  # rotated 90 counter-clockwise to display
    ],
)
def test_exif_orientation_is_applied(orientation, expected):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(quadrants(64, 64), "JPEG", quality=95, exif=exif.tobytes())
    out, w, h = imaging.process(data, size=32)
    assert (w, h) == (32, 32)
    assert corner_colors(decode(out)) == expected


@pytest.mark.parametrize(
    "make, expected_rgb",
    [
        (lambda: Image.new("L", (40, 40), 100), (100, 100, 100)),
        (lambda: Image.new("1", (40, 40), 1), (255, 255, 255)),
        (lambda: Image.new("LA", (40, 40), (100, 0)), (255, 255, 255)),  # transparent -> white background
        (lambda: Image.new("LA", (40, 40), (100, 255)), (100, 100, 100)),
        (lambda: Image.new("RGBA", (40, 40), (10, 200, 30, 255)), (10, 200, 30)),
        (lambda: Image.new("RGBA", (40, 40), (10, 200, 30, 0)), (255, 255, 255)),
        (lambda: Image.new("CMYK", (40, 40), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.fromarray(np.full((40, 40), 40000, np.uint16)), (156, 156, 156)),
        (lambda: Image.new("I", (40, 40), 65535), (255, 255, 255)),
        (lambda: Image.new("F", (40, 40), 77.0), (77, 77, 77)),
        (lambda: Image.new("YCbCr", (40, 40), (128, 128, 128)), (128, 128, 128)),
    ],
    ids=["L", "1", "LA-transparent", "LA-opaque", "RGBA", "RGBA-transparent", "CMYK", "I;16", "I", "F", "YCbCr"],
)
def test_every_mode_becomes_8bit_rgb(make, expected_rgb):
    rgb = imaging.to_rgb(make())
    assert rgb.mode == "RGB"
    arr = np.asarray(rgb, dtype=np.int16)
    assert np.abs(arr - np.array(expected_rgb)).max() <= 1


def test_palette_with_transparency_composites_on_white():
    p = Image.new("P", (20, 20), 1)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.putpixel((0, 0), 0)
    data = encode(p, "PNG", transparency=0)
    rgb = np.asarray(imaging.to_rgb(Image.open(io.BytesIO(data))))
    assert tuple(rgb[0, 0]) == WHITE
    assert tuple(rgb[10, 10]) == (200, 10, 10)


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"), ("L", "JPEG")])
def test_process_accepts_mode_end_to_end(mode, fmt):
    img = Image.new("RGB", (50, 30), (90, 120, 150)).convert(mode) if mode != "I;16" else Image.fromarray(
        np.full((30, 50), 30000, np.uint16))
    out, w, h = imaging.process(encode(img, fmt), size=16, output_format="png")
    arr = decode(out)
    assert arr.shape == (16, 16, 3) and (w, h) == (16, 16)


def test_resize_and_center_crop_geometry():
    # 300 x 100: left third red, middle green, right third blue. The center crop keeps only the green.
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, :100] = RED
    arr[:, 100:200] = GREEN
    arr[:, 200:] = BLUE
    out, w, h = imaging.process(encode(Image.fromarray(arr), "PNG"), size=50, output_format="png")
    got = decode(out)
    assert got.shape == (50, 50, 3)
    inner = got[:, 3:-3]
    assert np.abs(inner - np.array(GREEN)).max() <= 2


def test_tall_image_crops_vertically():
    arr = np.zeros((400, 100, 3), np.uint8)
    arr[:150] = RED
    arr[150:250] = WHITE
    arr[250:] = BLUE
    out, _, _ = imaging.process(encode(Image.fromarray(arr), "PNG"), size=20, output_format="png")
    got = decode(out)
    assert got.shape == (20, 20, 3)
    assert np.abs(got[2:-2] - np.array(WHITE)).max() <= 2


def test_draft_mode_matches_full_decode_closely():
    rng = np.random.default_rng(0)
    smooth = np.clip(rng.normal(128, 30, (30, 40, 3)), 0, 255).astype(np.uint8)
    big = Image.fromarray(smooth).resize((1600, 1200), Image.BICUBIC)
    data = encode(big, "JPEG", quality=95)
    fast, _, _ = imaging.process(data, size=64, output_format="png", draft=True)
    full, _, _ = imaging.process(data, size=64, output_format="png", draft=False)
    assert np.abs(decode(fast) - decode(full)).mean() < 3


def test_letterbox_keeps_the_whole_image_and_pads_evenly():
    out, w, h = imaging.process(encode(quadrants(100, 50), "PNG"), size=40, output_format="png", resize="letterbox",
                                pad_value=7)
    got = decode(out)
    assert (w, h) == (40, 40) and got.shape == (40, 40, 3)
    assert (got[:10] == 7).all() and (got[30:] == 7).all()  # 100x50 -> 40x20 at rows 10..29
    assert corner_colors(got[10:30]) == [RED, GREEN, BLUE, WHITE]  # all four quadrants are kept


def test_exact_resize_squeezes_without_cropping():
    got = decode(imaging.process(encode(quadrants(120, 40), "PNG"), size=32, output_format="png", resize="exact")[0])
    assert got.shape == (32, 32, 3)
    assert corner_colors(got) == [RED, GREEN, BLUE, WHITE]
    cropped = decode(imaging.process(encode(quadrants(120, 40), "PNG"), size=32, output_format="png")[0])
    assert not (cropped == got).all()


@pytest.mark.parametrize("mode", imaging.RESIZE_MODES)
def test_draft_mode_follows_every_resize_mode(mode):
    rng = np.random.default_rng(3)
    big = Image.fromarray(np.clip(rng.normal(128, 30, (30, 50, 3)), 0, 255).astype(np.uint8)).resize((2000, 1200))
    data = encode(big, "JPEG", quality=95)
    fast = decode(imaging.process(data, size=64, output_format="png", resize=mode, draft=True)[0])
    full = decode(imaging.process(data, size=64, output_format="png", resize=mode, draft=False)[0])
    assert fast.shape == full.shape == (64, 64, 3)
    assert np.abs(fast - full).mean() < 3


def test_raw_output_is_the_uint8_array():
    data = encode(quadrants(64, 48), "PNG")
    raw, _, _ = imaging.process(data, size=24, output_format="raw")
    array = imaging.decode_rgb(raw)
    assert array.dtype == np.uint8 and array.shape == (24, 24, 3)
    png, _, _ = imaging.process(data, size=24, output_format="png")
    assert (array == imaging.decode_rgb(png)).all()  # lossless either way: the same pixels


@pytest.mark.parametrize("output_format", ["jpeg", "png", "raw"])
def test_channel_histogram_counts_each_channels_values(output_format):
    rng = np.random.default_rng(5)
    data = encode(Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)), "PNG")
    processed, _, _ = imaging.process(data, size=32, output_format=output_format)
    array = imaging.decode_rgb(processed)
    expected = np.stack([np.bincount(array[..., c].ravel(), minlength=256) for c in range(3)])
    histogram = imaging.channel_histogram(processed)
    assert histogram.shape == (3, 256) and histogram.dtype == np.int64
    assert (histogram == expected).all() and histogram.sum() == 3 * 32 * 32


def test_jpeg_quality_setting_changes_size():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    data = encode(img, "PNG")
    low, _, _ = imaging.process(data, size=128, quality=20)
    high, _, _ = imaging.process(data, size=128, quality=95)
    assert Image.open(io.BytesIO(low)).format == "JPEG"
    assert len(low) < len(high)


def _truncated_jpeg() -> bytes:
    data = encode(quadrants(300, 200), "JPEG", quality=90)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "zero_byte"),
        (b"definitely not an image" * 10, "not_an_image"),
        (_truncated_jpeg(), "truncated"),
        (png_header_only(20000, 20000), "too_many_pixels"),
        (encode(Image.new("RGB", (32, 32)), "ICO", sizes=[(32, 32)]), "unsupported_format"),
    ],
    ids=["zero_byte", "text", "truncated_jpeg", "bomb", "ico"],
)
def test_damaged_bytes_raise_with_reason(data, reason):
    with pytest.raises(imaging.ImageError) as probe_error:
        imaging.probe(data, MAX_PIXELS)
    assert probe_error.value.reason == reason
    assert probe_error.value.detail
    with pytest.raises(imaging.ImageError) as process_error:
        imaging.process(data, size=32)
    assert process_error.value.reason == reason  # ingest and preprocess quarantine the same file alike


def test_every_quarantine_reason_is_documented():
    page = open(os.path.join(ROOT, "docs", "outputs.md"), encoding="utf-8").read()
    documented = set(re.findall(r"^\| `(\w+)` \|", page.split("Quarantine reasons:", 1)[1].split("\n#", 1)[0], re.M))
    assert documented == set(imaging.QUARANTINE_REASONS)


def test_truncated_jpeg_fails_in_process_too():
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(_truncated_jpeg(), size=32)
    assert e.value.reason == "truncated"


def test_a_cut_rle_bmp_is_truncated_at_probe_whatever_pillow_does():
    """Pillow's RLE decoder stops where the data ends; the end-of-bitmap walk decides, for any Pillow."""
    rng = np.random.default_rng(5)
    img = Image.fromarray(rng.integers(0, 4, (24, 40), dtype=np.uint8), "P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    data = fuzzing.bmp_rle8(img)
    assert imaging.probe(data, MAX_PIXELS).format == "BMP"
    assert np.array_equal(np.asarray(imaging.decode(data, MAX_PIXELS)), np.asarray(img.convert("RGB")))
    assert imaging.probe(data[:-2], MAX_PIXELS).height == 24  # no end-of-bitmap code, but every row is there
    start = int.from_bytes(data[10:14], "little")
    for cut in range(start + 1, len(data) - 4, 37):
        with pytest.raises(imaging.ImageError) as e:
            imaging.probe(data[:cut], MAX_PIXELS)
        assert e.value.reason == "truncated"


def test_pixel_limit_is_ours_not_pillows():
    data = encode(Image.new("L", (100, 100)), "PNG")
    with pytest.raises(imaging.ImageError) as e:
        imaging.probe(data, max_pixels=5000)
    assert e.value.reason == "too_many_pixels"
    assert imaging.probe(data, max_pixels=10000).width == 100
