"""Preprocess backends: pil and dali-cpu agree on the same inputs, every edge case is processed or
quarantined under DALI too, and the GPU placement follows what Spark assigned the task."""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgshards.config import load_config
from imgshards.imaging.dali import cuda_usable
from imgshards.preprocess.transform import Placement, place, process_series

from helpers import shared_dataset

pytest.importorskip("nvidia.dali")
needs_gpu = pytest.mark.skipif(not cuda_usable(0), reason="no CUDA device (run on a GPU machine: docs/preprocessing.md)")

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


def run(contents, backend: str, size: int = 48, seeds=None, **settings):
    settings = dataclasses.replace(load_config().preprocess, size=size, output_format="png", draft=False, **settings)
    settings = dataclasses.replace(settings, augment=dataclasses.replace(settings.augment, copies=1))
    placement = Placement("dali-gpu", 0, "0") if backend == "dali-gpu" else Placement(backend, None, None)
    seeds = None if seeds is None else pd.Series(seeds, dtype="float64")
    return process_series(pd.Series(contents), seeds, settings, 89_478_485, placement)


def pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), np.float32)


def parity_inputs() -> list:
    inputs = [encoded(photo(i, (160 + 17 * i, 120 + 9 * i)), "JPEG", quality=95) for i in range(6)]
    return inputs + [encoded(photo(10, (90, 200)), "PNG"), encoded(photo(11, (300, 100)).convert("L"), "PNG")]


@pytest.mark.parametrize("resize", ["crop", "letterbox", "exact"])
def test_pil_and_dali_cpu_agree_within_tolerance(resize):
    inputs = parity_inputs()
    pil, dali = run(inputs, "pil", resize=resize, pad_value=40), run(inputs, "dali-cpu", resize=resize, pad_value=40)
    assert list(dali["backend"]) == ["dali-cpu"] * len(inputs)
    assert list(pil["backend"]) == ["pil"] * len(inputs)
    for a, b in zip(pil["image"], dali["image"]):
        x, y = pixels(a), pixels(b)
        assert x.shape == y.shape == (48, 48, 3)
        assert np.abs(x - y).mean() < PARITY_MEAN_TOLERANCE


@needs_gpu
@pytest.mark.parametrize("resize", ["crop", "letterbox", "exact"])
def test_dali_gpu_agrees_with_pil(resize):
    inputs = parity_inputs()
    pil, gpu = run(inputs, "pil", resize=resize), run(inputs, "dali-gpu", resize=resize)
    assert list(gpu["backend"]) == ["dali-gpu"] * len(inputs) and set(gpu["device"]) == {"gpu:0"}
    for a, b in zip(pil["image"], gpu["image"]):
        assert np.abs(pixels(a) - pixels(b)).mean() < PARITY_MEAN_TOLERANCE


@needs_gpu
def test_gpu_augmentation_is_repeatable_and_close_to_the_cpu_copies():
    inputs = parity_inputs()
    seeds = [100 + i for i in range(len(inputs))]
    gpu, again, cpu = (run(inputs, backend, seeds=seeds) for backend in ("dali-gpu", "dali-gpu", "dali-cpu"))
    assert set(gpu["backend"]) == {"dali-gpu"} and set(cpu["backend"]) == {"dali-cpu"}
    assert list(gpu["image"]) == list(again["image"])
    for a, b in zip(gpu["image"], cpu["image"]):
        assert np.abs(pixels(a) - pixels(b)).mean() < PARITY_MEAN_TOLERANCE


@needs_gpu
def test_auto_places_on_the_gpu_when_cuda_has_it():
    assert place("auto", "0", cuda_usable) == Placement("dali-gpu", 0, "0")


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
    assert set(result.loc[ok, "backend"]) <= {"pil", "dali-cpu"}
    for image in result.loc[ok, "image"]:
        assert Image.open(io.BytesIO(image)).size == (32, 32)
    # Augmented copies of the same files: Pillow judges bad data for both, so the same files fail.
    copies = run(contents, "dali-cpu", size=32, seeds=list(range(1, len(contents) + 1)))
    assert list(copies["reason"].isna()) == list(ok)
    assert set(copies.loc[ok, "backend"]) == {"dali-cpu"}


@pytest.mark.shared_data
def test_a_batch_dali_rejects_is_redone_by_pillow_and_dali_decodes_no_more():
    with open(os.path.join(shared_dataset("edge-cases"), "metadata_icc_exif", "pillow__photoshop-200dpi-broken.jpg"), "rb") as f:
        broken = f.read()  # Pillow reads it; DALI's decoder rejects it
    good = [encoded(photo(i, (90, 70)), "JPEG") for i in range(3)]
    assert list(run(good, "dali-cpu")["backend"]) == ["dali-cpu"] * 3
    result = run(good + [broken], "dali-cpu")
    assert list(result["backend"]) == ["pil"] * 4 and result["reason"].isna().all()
    # Later batches in this process: Pillow decodes, DALI still augments (from Pillow's PNG).
    assert list(run(good, "dali-cpu")["backend"]) == ["pil"] * 3
    copies = run(good + [broken], "dali-cpu", seeds=[1, 2, 3, 4])
    assert list(copies["backend"]) == ["dali-cpu"] * 4 and copies["reason"].isna().all()
