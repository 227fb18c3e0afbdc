"""Preprocess backends: pil and dali-cpu agree on the same inputs, every edge case is processed or
quarantined under DALI too, and the GPU placement follows what Spark assigned the task."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import shared_dataset
from imgshards.config import load_config
from imgshards.preprocess import Placement, place, process_series

pytest.importorskip("nvidia.dali")

# Mean absolute difference allowed between backends, in 8-bit levels, on PNG output: the two resize
# kernels (Pillow's cubic with reducing_gap vs DALI's antialiased cubic) differ slightly.
PARITY_MEAN_TOLERANCE = 3.0


def photo(seed: int, size) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def run(contents, backend: str, size: int = 48):
    settings = dataclasses.replace(load_config().preprocess, size=size, output_format="png", draft=False)
    return process_series(pd.Series(contents), settings, 89_478_485, Placement(backend, None, None))


def test_pil_and_dali_cpu_agree_within_tolerance():
    inputs = [encoded(photo(i, (160 + 17 * i, 120 + 9 * i)), "JPEG", quality=95) for i in range(6)]
    inputs += [encoded(photo(10, (90, 200)), "PNG"), encoded(photo(11, (300, 100)).convert("L"), "PNG")]
    pil, dali = run(inputs, "pil"), run(inputs, "dali-cpu")
    assert list(dali["backend"]) == ["dali-cpu"] * len(inputs)
    assert list(pil["backend"]) == ["pil"] * len(inputs)
    for a, b in zip(pil["image"], dali["image"]):
        x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), np.float32)
        y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float32)
        assert x.shape == y.shape == (48, 48, 3)
        assert np.abs(x - y).mean() < PARITY_MEAN_TOLERANCE


def test_dali_hands_modes_and_orientation_to_pillow():
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encoded(photo(1, (80, 60)), "JPEG", exif=exif.tobytes())
    rgba = encoded(photo(2, (80, 60)).convert("RGBA"), "PNG")
    plain = encoded(photo(3, (80, 60)), "JPEG")
    result = run([rotated, rgba, plain, b"garbage"], "dali-cpu")
    assert list(result["backend"]) == ["pil", "pil", "dali-cpu", "pil"]
    assert list(result["reason"].isna()) == [True, True, True, False]


def test_placement_uses_the_assigned_gpu_never_a_fixed_zero():
    assert place("dali-gpu", "3", lambda d: True) == Placement("dali-gpu", 3, "3")
    assert place("auto", "1", lambda d: True).device == "gpu:1"
    fallback = place("auto", "1", lambda d: False)
    assert (fallback.backend, fallback.device, fallback.task_gpu) == ("dali-cpu", "cpu", "1") and "falling back" in fallback.note
    assert place("auto", None, lambda d: True).backend == "dali-cpu"
    with pytest.raises(RuntimeError, match="no GPU"):
        place("dali-gpu", None, lambda d: True)


@pytest.mark.shared_data
def test_edge_cases_under_dali_never_crash():
    import os

    root = shared_dataset("edge-cases")
    contents = []
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            if name != "MANIFEST.tsv":
                with open(os.path.join(folder, name), "rb") as f:
                    contents.append(f.read())
    result = run(contents, "dali-cpu", size=32)
    assert len(result) == len(contents)
    ok = result["reason"].isna()
    assert ok.sum() > 100 and (~ok).sum() > 30
    assert set(result.loc[ok, "backend"]) == {"pil", "dali-cpu"}
    for image in result.loc[ok, "image"]:
        assert Image.open(io.BytesIO(image)).size == (32, 32)
