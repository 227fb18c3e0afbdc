"""Benchmark: samples/s delivered to a training loop (no model) from the exported shards with each
reader backend, against an ImageFolder-style Dataset that decodes and resizes the original JPEGs with
the same number of workers and the same output size. One run; prints a Markdown table.

    .venv/bin/python benchmarks/bench_reader.py [--files 5000] [--workers 2] [--size 224]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageOps

from imgshards.config import load_config
from imgshards.export.run import run_export
from imgshards.imaging import center_crop_box, to_rgb
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import run_preprocess
from imgshards.train.loader import make_dataloader, normalize_chw

from common import SHARED_PHOTOS, local_session, replicate_dataset


class ImageFolderBaseline(torch.utils.data.Dataset):
    """What users write by hand: decode the original file, orient, RGB, resize + center crop, normalize."""

    def __init__(self, root: str, size: int):
        self.paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
        self.classes = sorted({os.path.basename(os.path.dirname(p)) for p in self.paths})
        self.size = size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        with open(path, "rb") as f:
            img = Image.open(io.BytesIO(f.read()))
            img = to_rgb(ImageOps.exif_transpose(img))
        box = center_crop_box(img.size[0], img.size[1], self.size)
        img = img.resize((self.size, self.size), Image.BICUBIC, box=box)
        label = self.classes.index(os.path.basename(os.path.dirname(path)))
        return torch.from_numpy(normalize_chw(np.asarray(img))), label


def consume(batches) -> int:
    samples = 0
    for batch in batches:
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        samples += images.shape[0]
    return samples


def args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=SHARED_PHOTOS)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workdir", default=None)
    return parser


def _main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-reader-")
    raw = os.path.join(work, "raw")
    shutil.rmtree(raw, ignore_errors=True)
    n = replicate_dataset(args.source, raw, args.files)
    config = dataclasses.replace(
        load_config(overrides=[f"preprocess.size={args.size}", "ingest.near_duplicates.enabled=false",
                               "ingest.split.train=1.0", "ingest.split.val=0.0", "ingest.split.test=0.0"]),
        warehouse=os.path.join(work, "warehouse"), output=os.path.join(work, "shards"), workdir=work)
    spark = local_session("local[2]", "bench-reader")
    try:
        run_ingest(spark, config, raw, "bench")
        run_preprocess(spark, config, "bench")
        run_export(spark, config, "bench")
    finally:
        spark.stop()

    rows = []
    # Petastorm imports only on the Spark 3.5 stack: IMGSHARDS_STACK=spark35 .venv-spark35/bin/python ... adds its row.
    backends = ["arrow"] + (["petastorm"] if importlib.util.find_spec("petastorm") else [])
    for backend in backends:
        loader = make_dataloader(config.output, "train", args.batch_size, seed=0, workers=args.workers, backend=backend)
        start = time.perf_counter()
        samples = consume(loader)
        rows.append((f"shards, `{backend}` backend ({args.workers} threads)", samples, time.perf_counter() - start))
    baseline = torch.utils.data.DataLoader(ImageFolderBaseline(raw, args.size), batch_size=args.batch_size,
                                           shuffle=True, num_workers=args.workers)
    start = time.perf_counter()
    samples = consume(baseline)
    rows.append((f"ImageFolder-style Dataset on the original JPEGs ({args.workers} workers)", samples,
                 time.perf_counter() - start))
    reference = rows[-1][1] / rows[-1][2]
    print(f"\n{n} images, output {args.size}x{args.size}, batch {args.batch_size}, {os.cpu_count()} cores\n")
    print("| reader | samples | seconds | samples/s | vs ImageFolder |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, samples, seconds in rows:
        print(f"| {label} | {samples} | {seconds:.1f} | {samples / seconds:.0f} | {samples / seconds / reference:.1f}x |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
