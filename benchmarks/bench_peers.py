"""Benchmark: the whole pipeline against the tool a user would pick instead, on the same files.

At each scale (hymenoptera copied to distinct files, as bench_ingest.py does: 1x, 4x and 8x of --base)
it times, as whole processes, in one run:
  - a plain loop in 2 processes: read, sha256, imgshards.imaging.opencv.process (the default transform,
    224 px JPEG q90);
  - Ray Data 2.60 doing that job as its image docs show (benchmarks/peers/ray_job.py: read_binary_files ->
    map_batches with Pillow's ImageOps.fit -> write_parquet), and Ray Data running this project's transform
    in the same map_batches, from its own environment (.work/ray-env, made on first use);
  - ./spark-submit.sh pipeline on the embedded default (ingest with dedup and near-duplicate hashing,
    preprocess, export, report), into a fresh warehouse: with ingest.content=copy (the default: the images
    table keeps the bytes) and with ingest.content=reference (it keeps path and sha256; preprocess reads the
    files by path), the latter being the job Ray does (Ray keeps no copy of the sources either).
Prints a Markdown table of images/s.

With --stacks spark4 spark35 the pipeline rows are timed on each stack (IMGSHARDS_STACK) in the same run.

    .venv/bin/python benchmarks/bench_peers.py [--scales 1 4 8] [--base 5000] [--stacks spark4 spark35]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import pyarrow.parquet as pq

from imgshards import imaging
from imgshards.config import CONTENT_MODES
from imgshards.imaging import opencv

from common import LAUNCHER, ROOT, SHARED_PHOTOS, replicate_dataset

RAY_ENV = os.path.join(ROOT, ".work", "ray-env")
# numpy and pyarrow: what Ray 2.60 wants; OpenCV and simplejpeg for the row that runs this project's transform.
RAY_REQUIREMENTS = ["ray[data]==2.60.0", "pillow==13.0.0", "opencv-python-headless==4.10.0.84", "simplejpeg==1.9.0"]
SIZE = 224


def ray_python() -> str:
    """The Ray environment's interpreter, made on first use (Ray and the stack it needs, nothing else)."""
    python = os.path.join(RAY_ENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", RAY_ENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *RAY_REQUIREMENTS], check=True)
    return python


def _loop(paths: list) -> int:
    done = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        hashlib.sha256(data).hexdigest()
        try:
            opencv.process(data, size=SIZE, quality=90)
            done += 1
        except imaging.ImageError:
            pass
    return done


def loop_seconds(paths: list, processes: int = 2) -> float:
    started = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_loop, [paths[i::processes] for i in range(processes)]))
    return time.perf_counter() - started


def timed(command: list, log: str, env: dict = None) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"{command[:2]} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - started


def args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=SHARED_PHOTOS)
    parser.add_argument("--base", type=int, default=5000, help="images at scale 1")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--stacks", nargs="+", default=["spark4"], choices=["spark4", "spark35"],
                        help="the stacks whose pipeline is timed (scripts/setup.sh --stack)")
    return parser


def _main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    python = ray_python()
    for stack in args.stacks:  # set up, and the launcher's one-time class-data archive made, before timing
        subprocess.run([os.path.join(ROOT, "scripts", "setup.sh"), "--stack", stack], check=True)
        timed([LAUNCHER, "history", "--warehouse", os.path.join(tempfile.gettempdir(), f"bench-peers-warm-{stack}")],
              os.devnull, env={"IMGSHARDS_STACK": stack})
    work = args.workdir or tempfile.mkdtemp(prefix="bench-peers-")
    rows = []
    try:
        for scale in args.scales:
            raw = os.path.join(work, f"raw-{scale}x")
            shutil.rmtree(raw, ignore_errors=True)
            count = replicate_dataset(args.source, raw, args.base * scale)
            paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(raw) for f in fs)
            _loop(paths[:200])  # the page cache and imports warm for everyone
            loop = loop_seconds(paths)
            rays = []
            for transform in ("pillow", "imgshards"):
                ray_out = os.path.join(work, f"ray-{transform}-{scale}x")
                rays.append(timed([python, os.path.join(ROOT, "benchmarks", "peers", "ray_job.py"), raw, ray_out,
                                   "--size", str(SIZE), "--transform", transform],
                                  os.path.join(work, f"ray-{transform}-{scale}x.log"),
                                  env={"PYTHONPATH": os.path.join(ROOT, "lib")}))
                images = pq.read_table(ray_out, columns=["image"])["image"]
                written = len(images) - images.null_count
                if written != count:
                    raise SystemExit(f"Ray ({transform}) wrote {written} images for {count} files")
                shutil.rmtree(ray_out, ignore_errors=True)
            for stack in args.stacks:
                pipelines = []
                for content in CONTENT_MODES:
                    pipeline_work = os.path.join(work, f"pipeline-{stack}-{content}-{scale}x")
                    pipelines.append(timed(
                        [LAUNCHER, "pipeline", "--input", raw, "--warehouse", os.path.join(pipeline_work, "warehouse"),
                         "--output", os.path.join(pipeline_work, "shards"),
                         "--set", f"workdir={json.dumps(pipeline_work)}", "--set", f"ingest.content={content}"],
                        os.path.join(work, f"pipeline-{stack}-{content}-{scale}x.log"), env={"IMGSHARDS_STACK": stack}))
                    shutil.rmtree(pipeline_work, ignore_errors=True)
                rows.append((scale, count, stack, loop, *rays, *pipelines))
            shutil.rmtree(raw, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores; {SIZE} px JPEG q90 output; images/s over whole processes\n")
    print("| scale | images | stack | loop, 2 processes | Ray Data, Pillow | Ray Data, imgshards transform "
          "| pipeline, copy | pipeline, reference | copy / Ray | reference / Ray | reference / loop |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scale, count, stack, loop, ray, ray_ours, copy, reference in rows:
        print(f"| {scale}x | {count} | {stack} | {count / loop:.0f} | {count / ray:.0f} | {count / ray_ours:.0f} "
              f"| {count / copy:.0f} | {count / reference:.0f} | {ray / copy:.2f} | {ray / reference:.2f} "
              f"| {loop / reference:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
