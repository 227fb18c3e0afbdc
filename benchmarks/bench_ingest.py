"""Benchmark: the ingest job's files/s and MB/s next to, on the same files in one run, the machine's raw
read + sha256 rate and a plain loop doing ingest's per-file work (read, sha256, header probe, dHash) in
2 processes. Prints a Markdown table.

    .venv/bin/python benchmarks/bench_ingest.py [--source ../shared/datasets/hymenoptera] [--files 5000]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from imgshards import imaging
from imgshards.config import load_config
from imgshards.ingest.run import run_ingest

from common import SHARED_PHOTOS, local_session, replicate_dataset


def read_and_hash(paths) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        hashlib.sha256(data).hexdigest()
        total += len(data)
    return total


def ingest_work(paths) -> int:
    """What ingest does per file, as a plain loop: read, sha256, header probe, hashes and quality signals."""
    limit = load_config().ingest.max_pixels
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        hashlib.sha256(data).hexdigest()
        try:
            opened = imaging.open_image(data, limit)
            imaging.probe(data, limit, opened)
            imaging.fingerprint(data, limit, opened)
        except imaging.ImageError:
            pass
    return len(paths)


def raw_rate(paths, processes: int, work=read_and_hash) -> float:
    """Seconds to run ``work`` over every file with ``processes`` processes."""
    chunks = [paths[i::processes] for i in range(processes)]
    start = time.perf_counter()
    if processes == 1:
        work(paths)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(work, chunks))
    return time.perf_counter() - start


def args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=SHARED_PHOTOS)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    return parser


def _main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    if not os.path.isdir(args.source):
        print(f"source {args.source} not found", file=sys.stderr)
        return 2
    work = args.workdir or tempfile.mkdtemp(prefix="bench-ingest-")
    raw = os.path.join(work, "raw")
    shutil.rmtree(raw, ignore_errors=True)
    n = replicate_dataset(args.source, raw, args.files)
    paths = [os.path.join(d, f) for d, _, fs in os.walk(raw) for f in fs]
    megabytes = read_and_hash(paths) / 1e6  # also warms the page cache, so every row reads from memory
    rows, clustered = [], {}
    for processes in (1, 2):
        seconds = raw_rate(paths, processes)
        rows.append((f"raw read + sha256, {processes} process(es)", seconds))
    loop = raw_rate(paths, 2, ingest_work)
    rows.append(("loop doing ingest's work (read, sha256, header probe, dHash), 2 processes", loop))
    spark = local_session(args.master, "bench-ingest")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        # One small ingest first, so that no timed run pays the JVM's warm-up (Delta's first use, code
        # generation, the Python workers' start): about 10 s, which the first timed run would carry alone.
        warm = os.path.join(work, "warm")
        replicate_dataset(args.source, warm, 50)
        run_ingest(spark, dataclasses.replace(load_config(), warehouse=os.path.join(work, "warehouse-warm"), workdir=work),
                   warm, "warm-up")
        for label, overrides in (("ingest job (near-duplicate hash on, default)", []),
                                 ("ingest job (near-duplicate hash on, ingest.content=reference)",
                                  ["ingest.content=reference"]),
                                 ("ingest job (near-duplicate hash off)", ["ingest.near_duplicates.enabled=false"])):
            config = load_config(overrides=overrides)
            warehouse = os.path.join(work, "warehouse-" + str(len(rows)))
            shutil.rmtree(warehouse, ignore_errors=True)
            config = dataclasses.replace(config, warehouse=warehouse, workdir=work)
            start = time.perf_counter()
            counts = run_ingest(spark, config, raw, "bench")
            seconds = time.perf_counter() - start
            assert counts.ingested == len(paths), counts
            rows.append((f"{label}, {args.master}", seconds))
            clustered = counts.near_duplicates or clustered
    finally:
        spark.stop()
    reference = rows[1][1]
    print(f"\n{n} files, {megabytes:.0f} MB (from {os.path.relpath(args.source)}), {os.cpu_count()} cores\n")
    print("| what | seconds | files/s | MB/s | vs raw (2 processes) | vs ingest's work in a loop |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {n / seconds:.0f} | {megabytes / seconds:.1f} | {reference / seconds:.0%} "
              f"| {loop / seconds:.2f} |")
    if clustered:  # how the clustering's work grows: with the distinct hashes close to each other, not the files
        print(f"\nnear-duplicates: {clustered['clusters']} clusters holding {clustered['images']} images, "
              f"{clustered['hash_pairs']} pairs of distinct hashes")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
