"""Benchmark: the preprocess transform of one Spark task (imgshards.preprocess.transform.process_series, the body of
the pandas UDF) per backend, without Spark: images/s of one worker process on batches of 64.

Rows: pil, opencv (the default), dali-cpu, and dali-gpu when CUDA has a device; each plain and with augmentation (every image
made into one augmented copy), on the given photos and on upscaled large ones. With dali-gpu, the GPU/CPU
ratio is against dali-cpu in one process (a Spark executor runs one such process per core, and typically
one task per GPU). Needs no Spark or Java, so it also runs on a bare GPU machine with DALI installed.

    .venv/bin/python benchmarks/bench_backends.py [--images DIR] [--count 512] [--large-mpx 12] [--large-count 32]
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import os
import time

import pandas as pd
from PIL import Image

from imgshards import imaging
from imgshards.config import PreprocessConfig
from imgshards.imaging import dali, opencv
from imgshards.preprocess.transform import Placement, process_series

BATCH = 64
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets", "hymenoptera")


def load(folder: str, count: int) -> list:
    paths = sorted(glob.glob(os.path.join(folder, "**", "*.jp*g"), recursive=True))
    if not paths:
        raise SystemExit(f"no JPEGs under {folder}")
    data = [open(p, "rb").read() for p in paths]
    return [data[i % len(data)] for i in range(count)]


def upscale(contents: list, megapixels: float, count: int) -> list:
    out = []
    for data in contents[:count]:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        scale = (megapixels * 1e6 / (img.size[0] * img.size[1])) ** 0.5
        buffer = io.BytesIO()
        img.resize((int(img.size[0] * scale), int(img.size[1] * scale)), Image.BICUBIC).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def rate(contents: list, settings: PreprocessConfig, placement: Placement, augment: bool) -> float:
    """Images/s over all batches, after one warm-up batch (pipeline build, CUDA context)."""
    seeds = [float(i + 1) if augment else None for i in range(len(contents))]
    batches = [(pd.Series(contents[i : i + BATCH]), pd.Series(seeds[i : i + BATCH], dtype="float64"))
               for i in range(0, len(contents), BATCH)]
    process_series(*batches[0], settings, 2**31, placement)
    start = time.perf_counter()
    done = 0
    for images, batch_seeds in batches:
        result = process_series(images, batch_seeds, settings, 2**31, placement)
        failed = result["reason"].notna().sum()
        if failed:
            raise RuntimeError(f"{failed} images failed: {list(result['detail'].dropna())[:3]}")
        done += len(images)
    return done / (time.perf_counter() - start)


def decode_rate(contents: list, settings: PreprocessConfig) -> float:
    """Images/s of the opencv transform's JPEG decode alone (header, simplejpeg at the DCT scale it picks)."""
    start = time.perf_counter()
    for data in contents:
        img = imaging.codecs.open_image(data, 2**31)
        if opencv._decode_jpeg(data, img, settings.size, settings.resize, settings.draft) is None:
            raise RuntimeError("a photo that the opencv transform does not decode with simplejpeg")
    return len(contents) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=SHARED, help="folder of JPEG photos (default: ../shared hymenoptera)")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--large-mpx", type=float, default=12.0)
    parser.add_argument("--large-count", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    settings = PreprocessConfig(size=args.size)
    settings = dataclasses.replace(settings, augment=dataclasses.replace(settings.augment, copies=1))
    photos = load(args.images, args.count)
    sets = {"photos": photos, f"large {args.large_mpx:g} Mpx": upscale(photos, args.large_mpx, args.large_count)}
    placements = [Placement("pil", None, None), Placement("opencv", None, None), Placement("dali-cpu", None, None)]
    if dali.cuda_usable(0):
        placements.append(Placement("dali-gpu", 0, "0"))
    print("| data | images | backend | plain images/s | augmented images/s |")
    print("| --- | ---: | --- | ---: | ---: |")
    rates = {}
    for name, contents in sets.items():
        for placement in placements:
            plain = rate(contents, settings, placement, augment=False)
            augmented = rate(contents, settings, placement, augment=True)
            rates[(name, placement.backend)] = (plain, augmented)
            label = placement.backend if placement.device_id is None and not placement.backend.startswith("dali") \
                else f"{placement.backend} ({placement.device})"
            aug_label = "dali-cpu" if placement.device_id is None else "dali-gpu"
            print(f"| {name} | {len(contents)} | {label} | {plain:,.0f} | {augmented:,.0f} ({aug_label}) |", flush=True)
    # The floor of any transform of these JPEGs: libjpeg-turbo's decode alone, at the DCT scale opencv uses.
    print("\n| data | opencv / pil, plain | JPEG decode alone, images/s | its ceiling over pil |")
    print("| --- | ---: | ---: | ---: |")
    for name, contents in sets.items():
        pil, fast = rates[(name, "pil")][0], rates[(name, "opencv")][0]
        decode = decode_rate(contents, settings)
        print(f"| {name} | {fast / pil:.2f}x | {decode:,.0f} | {decode / pil:.2f}x |")
    if any(backend == "dali-gpu" for _, backend in rates):
        print("\n| data | dali-gpu / dali-cpu, plain | augmented |")
        print("| --- | ---: | ---: |")
        for name in sets:
            gpu, cpu = rates[(name, "dali-gpu")], rates[(name, "dali-cpu")]
            print(f"| {name} | {gpu[0] / cpu[0]:.1f}x | {gpu[1] / cpu[1]:.1f}x |")


if __name__ == "__main__":
    main()
