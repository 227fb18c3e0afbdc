"""Benchmark: samples/s delivered to a training loop (no model) from one export in each of its formats:
the project's loader on the Petastorm datasets (each backend this stack has), Mosaic Streaming's
StreamingDataset on the MDS shards and webdataset.WebDataset on the tar shards (images decoded by the
manifest's codec and normalized as the loader does, in a DataLoader with the same workers), against an
ImageFolder-style Dataset that decodes and resizes the original JPEGs with the same number of workers and
the same output size; and what each format costs at export (seconds over a Petastorm-only export, bytes).
One run; prints two Markdown tables.

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
from imgshards.train.loader import make_dataloader, normalize_chw, read_manifest
from imgshards.train.untrusted import image_decoder

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
    parser.add_argument("--rounds", type=int, default=2, help="each export and read this many times, interleaved; "
                        "the tables show the fastest")
    parser.add_argument("--workdir", default=None)
    return parser


def to_tensor(manifest: dict):
    """Stored image (bytes, or an MDS array) -> normalized 3 x H x W tensor, decoded as the loader decodes."""
    decode = image_decoder(manifest["image"])
    return lambda image: torch.from_numpy(normalize_chw(decode(image) if isinstance(image, bytes) else image))


def mds_loader(manifest: dict, split: str, batch_size: int, workers: int):
    from streaming import StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    transform = to_tensor(manifest)

    class Images(StreamingDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            return {"image": transform(sample["image"]), "label": sample["label"]}

    clean_stale_shared_memory()
    folder = manifest["splits"][split]["formats"]["mds"]["url"].removeprefix("file://")
    dataset = Images(local=folder, shuffle=True, batch_size=batch_size)
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers)


def webdataset_loader(manifest: dict, split: str, batch_size: int, workers: int):
    import webdataset as wds

    entry = manifest["splits"][split]["formats"]["webdataset"]
    dataset = (wds.WebDataset(f"{entry['url'].removeprefix('file://')}/{entry['pattern']}", shardshuffle=100,
                              nodesplitter=wds.split_by_node)
               .shuffle(1000).to_tuple("jpg;png;npy", "cls").map_tuple(to_tensor(manifest), int).batched(batch_size))
    return wds.WebLoader(dataset, batch_size=None, num_workers=workers)


def timed(batches) -> tuple:
    """(samples, seconds) of one pass over ``batches`` (starting its workers included)."""
    start = time.perf_counter()
    samples = consume(batches)
    return samples, time.perf_counter() - start


def _main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-reader-")
    raw = os.path.join(work, "raw")
    shutil.rmtree(raw, ignore_errors=True)
    n = replicate_dataset(args.source, raw, args.files)
    base = [f"preprocess.size={args.size}", "ingest.near_duplicates.enabled=false",
            "ingest.split.train=1.0", "ingest.split.val=0.0", "ingest.split.test=0.0"]
    config = dataclasses.replace(load_config(overrides=base), warehouse=os.path.join(work, "warehouse"),
                                 output=os.path.join(work, "shards"), workdir=work)
    # Each format set exported into an output of its own; the last one, with every format, is read.
    format_sets = [["petastorm"], ["petastorm", "mds"], ["petastorm", "webdataset"], ["petastorm", "mds", "webdataset"]]
    export_seconds: dict = {}
    written: dict = {}
    spark = local_session("local[2]", "bench-reader")
    try:
        run_ingest(spark, config, raw, "bench")
        run_preprocess(spark, config, "bench")
        for round_ in range(args.rounds):
            for formats in format_sets:
                key = ", ".join(formats)
                output = os.path.join(work, "shards-" + "-".join(formats))
                exporting = dataclasses.replace(load_config(overrides=[*base, f"export.formats=[{','.join(formats)}]"]),
                                                warehouse=config.warehouse, output=output, workdir=work)
                start = time.perf_counter()
                run_export(spark, exporting, f"bench-{round_}")
                export_seconds[key] = min(export_seconds.get(key, float("inf")), time.perf_counter() - start)
                written[key] = read_manifest(output)
    finally:
        spark.stop()
    manifest = written[", ".join(format_sets[-1])]
    shards = os.path.join(work, "shards-" + "-".join(format_sets[-1]))

    # Petastorm imports only on the Spark 3.5 stack: IMGSHARDS_STACK=spark35 .venv-spark35/bin/python ... adds its row.
    backends = ["arrow"] + (["petastorm"] if importlib.util.find_spec("petastorm") else [])
    readers = [(f"petastorm: the project's loader, `{backend}` backend ({args.workers} threads)",
                lambda backend=backend: make_dataloader(shards, "train", args.batch_size, seed=0, workers=args.workers,
                                                        backend=backend)) for backend in backends]
    # The MDS and WebDataset readers are in the default stack's environment (the mds and webdataset extras).
    if importlib.util.find_spec("streaming"):
        readers.append((f"mds: streaming.StreamingDataset ({args.workers} workers)",
                        lambda: mds_loader(manifest, "train", args.batch_size, args.workers)))
    if importlib.util.find_spec("webdataset"):
        readers.append((f"webdataset: webdataset.WebDataset ({args.workers} workers)",
                        lambda: webdataset_loader(manifest, "train", args.batch_size, args.workers)))
    readers.append((f"ImageFolder-style Dataset on the original JPEGs ({args.workers} workers)",
                    lambda: torch.utils.data.DataLoader(ImageFolderBaseline(raw, args.size), batch_size=args.batch_size,
                                                        shuffle=True, num_workers=args.workers)))
    best: dict = {}
    for _ in range(args.rounds):
        for label, make in readers:
            samples, seconds = timed(make())
            best[label] = (samples, min(seconds, best.get(label, (0, float("inf")))[1]))
    rows = [(label, *best[label]) for label, _ in readers]
    reference = rows[-1][1] / rows[-1][2]
    print(f"\n{n} images, output {args.size}x{args.size}, batch {args.batch_size}, {os.cpu_count()} cores, "
          f"fastest of {args.rounds} rounds\n")
    print("| reader | samples | seconds | samples/s | vs ImageFolder |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, samples, seconds in rows:
        print(f"| {label} | {samples} | {seconds:.1f} | {samples / seconds:.0f} | {samples / seconds / reference:.1f}x |")

    petastorm_only = export_seconds["petastorm"]
    print("\n| export.formats | export, s | over petastorm alone, s | bytes per format, MB |")
    print("| --- | ---: | ---: | --- |")
    for key, seconds in export_seconds.items():
        train = written[key]["splits"]["train"]
        sizes = {"petastorm": train["bytes"], **{f: e["bytes"] for f, e in train.get("formats", {}).items()}}
        print(f"| {key} | {seconds:.1f} | {seconds - petastorm_only:+.1f} | "
              + ", ".join(f"{f} {b / 1e6:.1f}" for f, b in sizes.items()) + " |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
