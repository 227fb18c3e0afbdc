"""Benchmark: the ingest job's files/s and MB/s next to the machine's raw read + sha256 rate on the
same files, in one run. Prints a Markdown table.

    .venv/bin/python scripts/bench_ingest.py [--source ../shared/datasets/hymenoptera] [--files 5000]
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

from imgshards.config import load_config
from imgshards.ingest import run_ingest
from imgshards.sample import replicate_dataset
from imgshards.session import PROJECT_ROOT, build_session


def read_and_hash(paths) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        hashlib.sha256(data).hexdigest()
        total += len(data)
    return total


def raw_rate(paths, processes: int) -> float:
    """Seconds to read and sha256 every file with ``processes`` processes."""
    chunks = [paths[i::processes] for i in range(processes)]
    start = time.perf_counter()
    if processes == 1:
        read_and_hash(paths)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(read_and_hash, chunks))
    return time.perf_counter() - start


def args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=os.path.join(PROJECT_ROOT, "..", "shared", "datasets", "hymenoptera"))
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
    rows = []
    for processes in (1, 2):
        seconds = raw_rate(paths, processes)
        rows.append((f"raw read + sha256, {processes} process(es)", seconds))
    spark = build_session(args.master, "bench-ingest")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for label, overrides in (("ingest job (near-duplicate hash on, default)", []),
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
    finally:
        spark.stop()
    reference = rows[1][1]
    print(f"\n{n} files, {megabytes:.0f} MB (from {os.path.relpath(args.source)}), {os.cpu_count()} cores\n")
    print("| what | seconds | files/s | MB/s | vs raw (2 processes) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {n / seconds:.0f} | {megabytes / seconds:.1f} | {reference / seconds:.0%} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
