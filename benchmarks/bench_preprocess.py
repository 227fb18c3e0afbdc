"""Benchmark: preprocess throughput, in one run on the same files:
  (a) a plain single-process loop over the same transform as the job's backend (--backend: opencv, the
      default, or pil) doing decode + orient + resize + crop + encode (draft on), and without draft mode;
  (b) the preprocess job with that backend on local[2];  (c) with backend dali-cpu;
  (d) a naive row-at-a-time Python UDF calling the same function.
Data: ../shared/datasets/hymenoptera, and large photos made by upscaling them (>= 8 Mpx); peak RSS of
the Spark Python workers is sampled, also with 24 Mpx inputs. Prints Markdown tables.

    .venv/bin/python benchmarks/bench_preprocess.py [--photos 2000] [--large 240] [--size 224] [--content copy]
        [--backend opencv]

--content reference ingests the photos by reference (the images table keeps no bytes; the job's workers
read each file by path and check its sha256); --large 0 leaves out the large and huge photos.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

from bench_memory import TreePeak  # benchmarks/ is on sys.path when a script runs
from PIL import Image
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType

from imgshards import imaging
from imgshards.config import load_config
from imgshards.delta.tables import spread_scans
from imgshards.imaging import opencv
from imgshards.ingest.run import run_ingest
from imgshards.preprocess.run import process_column, run_preprocess

from common import SHARED_PHOTOS, local_session, profile_settings, replicate_dataset


def make_large(source_files, target: str, megapixels: float, count: int) -> list:
    """Upscale the first ``count`` photos to about ``megapixels`` Mpx each (JPEG quality 90)."""
    os.makedirs(os.path.join(target, "large"), exist_ok=True)
    paths = []
    for i, path in enumerate(source_files[:count]):
        img = Image.open(path).convert("RGB")
        scale = (megapixels * 1e6 / (img.size[0] * img.size[1])) ** 0.5
        big = img.resize((int(img.size[0] * scale), int(img.size[1] * scale)), Image.BICUBIC)
        out = os.path.join(target, "large", f"large_{i:03d}.jpg")
        big.save(out, quality=90)
        paths.append(out)
    return paths


_DATAS: list = []  # the loop's input; forked processes inherit it instead of receiving copies
_BACKEND = ["opencv"]  # the loop's transform (--backend), inherited the same way
TRANSFORMS = {"opencv": opencv.process, "pil": imaging.process}


def _loop(start: int, step: int, size: int, draft: bool) -> None:
    transform = TRANSFORMS[_BACKEND[0]]
    for data in _DATAS[start::step]:
        try:
            transform(data, size=size, draft=draft)
        except imaging.ImageError:
            pass


def loop_rate(paths, size: int, draft: bool, processes: int = 1) -> float:
    """Images/s of the plain loop in ``processes`` processes, each taking every processes-th file."""
    _DATAS.clear()
    for p in paths:
        with open(p, "rb") as f:
            _DATAS.append(f.read())
    start = time.perf_counter()
    if processes == 1:
        _loop(0, 1, size, draft)
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.starmap(_loop, [(i, processes, size, draft) for i in range(processes)])
    return len(_DATAS) / (time.perf_counter() - start)


def job_rate(spark, config, raw: str, backend: str, work: str, runs: int = 2) -> tuple:
    """The preprocess job into an empty processed table: best images/s of ``runs`` (the first in a fresh
    JVM pays JIT warm-up), the peak worker RSS, and the images processed."""
    cfg = dataclasses.replace(config, warehouse=os.path.join(work, "wh-" + os.path.basename(raw)),
                              preprocess=dataclasses.replace(config.preprocess, backend=backend))
    if not os.path.exists(cfg.warehouse):
        run_ingest(spark, cfg, raw, "bench")
    best, peak = 0.0, 0.0
    for _ in range(runs):
        shutil.rmtree(cfg.table("processed").path, ignore_errors=True)
        with TreePeak(os.getpid()) as rss:  # the Python workers are children of this process's JVM
            start = time.perf_counter()
            counts = run_preprocess(spark, cfg, "bench")
            seconds = time.perf_counter() - start
        best, peak = max(best, counts.processed / seconds), max(peak, rss.python)
    return best, peak, counts.processed


def transform_rate(spark, config, raw: str, work: str) -> float:
    """The preprocess pandas UDF alone (the config's backend), into a no-op sink: the job without its Delta
    bookkeeping."""
    images = spark.read.format("delta").load(os.path.join(work, "wh-" + os.path.basename(raw), "images"))
    source = (F.col("path"), F.col("size_bytes"), F.col("sha256")) if config.ingest.content == "reference" else None
    with spread_scans(spark):
        start = time.perf_counter()
        images.select(process_column(F.col("content"), F.lit(None).cast("long"), config.preprocess,
                                     config.ingest.max_pixels, source).alias("r")).write.format("noop").mode("overwrite").save()
        return images.count() / (time.perf_counter() - start)


def naive_udf_rate(spark, config, raw: str, work: str) -> float:
    images = spark.read.format("delta").load(os.path.join(work, "wh-" + os.path.basename(raw), "images"))
    size, quality, transform = config.preprocess.size, config.preprocess.quality, TRANSFORMS[config.preprocess.backend]

    @F.udf(BinaryType())
    def naive(content, path):
        if content is None:  # ingested by reference: the file, read by path
            with open(path.removeprefix("file:"), "rb") as f:
                content = f.read()
        try:
            return transform(bytes(content), size=size, quality=quality)[0]
        except imaging.ImageError:
            return None

    start = time.perf_counter()
    n = images.select(naive("content", "path").alias("image")).filter(F.col("image").isNotNull()).count()
    return n / (time.perf_counter() - start)


DALI = importlib.util.find_spec("nvidia.dali") is not None


def args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=SHARED_PHOTOS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--large", type=int, default=240, help="how many large photos to make (0: none, nor huge)")
    parser.add_argument("--photos", type=int, default=2000, help="hymenoptera copies (distinct bytes)")
    parser.add_argument("--content", choices=("copy", "reference"), default="copy", help="ingest.content for the jobs")
    parser.add_argument("--backend", choices=tuple(TRANSFORMS), default="opencv",
                        help="the CPU backend of the loops and job (b)")
    return parser


def _main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-pre-")
    sources = sorted(os.path.join(d, f) for d, _, fs in os.walk(args.source) for f in fs if f.endswith(".jpg"))
    photos = os.path.join(work, "hymenoptera")
    replicate_dataset(args.source, photos, args.photos)
    datasets = [(f"hymenoptera ({args.photos}+ copies, ~500x375)", photos)]
    if args.large:
        large, huge = os.path.join(work, "large8"), os.path.join(work, "large24")
        make_large(sources, large, 9, args.large)
        make_large(sources, huge, 24, 8)
        datasets += [(f"large photos ({args.large} x 9 Mpx)", large), ("huge photos (8 x 24 Mpx)", huge)]
    config = load_config(overrides=[f"preprocess.size={args.size}", "ingest.near_duplicates.enabled=false",
                                    f"ingest.content={args.content}", f"preprocess.backend={args.backend}"])
    _BACKEND[:] = [args.backend]
    config = dataclasses.replace(config, workdir=work)
    # The JVM as `./spark-submit.sh preprocess` starts it (the local profile's JIT and collector), not the
    # test suite's: on 2 cores the C2 compiler's CPU comes out of the Python workers' share.
    java_options = profile_settings("local")["spark.driver.extraJavaOptions"]
    spark = local_session("local[2]", "bench-preprocess", {"spark.driver.extraJavaOptions": java_options})
    spark.sparkContext.setLogLevel("ERROR")
    tables = []
    try:
        for label, raw in datasets:
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(raw) for f in fs)
            a = loop_rate(files, args.size, draft=True)
            a2 = loop_rate(files, args.size, draft=True, processes=2)
            a_nodraft = loop_rate(files, args.size, draft=False)
            b, b_rss, n = job_rate(spark, config, raw, args.backend, work)
            t = transform_rate(spark, config, raw, work)
            # DALI is in the default stack only (the gpu extra); elsewhere its column says n/a.
            c, c_rss = job_rate(spark, config, raw, "dali-cpu", work)[:2] if DALI else (float("nan"), float("nan"))
            d = naive_udf_rate(spark, config, raw, work)
            tables.append((label, n, a, a2, a_nodraft, b, t, b_rss, c, c_rss, d))
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\noutput {args.size}x{args.size} JPEG q{config.preprocess.quality}, {os.cpu_count()} cores, "
          f"ingest.content={args.content}; images/s\n")
    b = args.backend
    print(f"| data | images | (a) {b} loop, 1 process | loop, 2 processes | loop without draft | (b) job, {b}, local[2] "
          f"| (b) / 2x(a) | (b) / 2-process loop | (b) / loop without draft | {b} UDF alone, local[2] | UDF / 2x(a) "
          f"| (c) job, dali-cpu | (d) naive row UDF | peak RSS per Python worker ({b} / dali-cpu) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, n, a, a2, a_nd, b, t, b_rss, c, c_rss, d in tables:
        print(f"| {label} | {n} | {a:.0f} | {a2:.0f} | {a_nd:.1f} | {b:.0f} | {b / (2 * a):.2f} | {b / a2:.2f} "
              f"| {b / a_nd:.1f}x | {t:.0f} | {t / (2 * a):.2f} | {c:.0f} | {d:.0f} | {b_rss:.0f} MB / {c_rss:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
