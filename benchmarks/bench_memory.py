"""Benchmark: peak memory of each job on the largest images the settings allow.

Makes photos of exactly ``ingest.max_pixels`` pixels (hymenoptera photos upscaled; JPEG q90 and PNG, each
from a different photo), many to a partition, and runs ``./spark-submit.sh`` ingest, preprocess with
``opencv`` (the default), with ``pil`` and with ``dali-cpu`` (each on a copy of the ingested tables) and
export on the embedded default
(local[*], one JVM that is driver and executor). While each job runs it samples the peak resident memory
(VmHWM) of the JVM and of every Python worker in the job's process tree. Prints a Markdown table; run it
with two ``--megapixels`` values to see how the peaks grow with the image size (docs/reliability.md: sizing executors).

    .venv/bin/python benchmarks/bench_memory.py [--megapixels 89.478485 24] [--jpeg 24] [--png 8]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from imgshards.config import load_config

from common import LAUNCHER, ROOT, SHARED_PHOTOS

LAUNCHER = LAUNCHER


class TreePeak:
    """Peak VmHWM, in MB, of the JVM and of the largest Python worker among ``root``'s descendants."""

    def __init__(self, root: int):
        self.root = root
        self.jvm = self.python = 0.0
        self.workers: set = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list:
        parents = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
        tree, frontier = [self.root], [self.root]  # spark-submit execs the JVM: the root is the JVM
        while frontier:
            children = [pid for pid, parent in parents.items() if parent in frontier]
            tree += children
            frontier = children
        return tree

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        command = f.read()
                    with open(f"/proc/{pid}/status") as f:
                        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
                except (OSError, StopIteration):
                    continue
                if command.startswith(b"java") or b"/bin/java" in command.split(b"\0")[0]:
                    self.jvm = max(self.jvm, peak)
                elif b"pyspark.daemon" in command or b"pyspark.worker" in command:
                    self.python = max(self.python, peak)
                    self.workers.add(pid)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_images(sources: list, target: str, pixels: int, jpegs: int, pngs: int, png16: int = 0) -> list:
    """Photos of exactly ``pixels`` (or just under) pixels, 10:9 wide, each from another source photo:
    ``jpegs`` JPEG q90, ``pngs`` 8-bit RGB PNG, ``png16`` 16-bit PNG (alternately 48-bit RGB and 16-bit
    grayscale, as scanners, microscopes and medical exports write them)."""
    os.makedirs(target, exist_ok=True)
    width = int((pixels * 10 / 9) ** 0.5)
    height = pixels // width
    sizes = []
    for i in range(jpegs + pngs + png16):
        with Image.open(sources[i % len(sources)]) as photo:
            big = photo.convert("RGB").resize((width, height), Image.BICUBIC)
        if i < jpegs + pngs:
            fmt, options = ("JPEG", {"quality": 90}) if i < jpegs else ("PNG", {"compress_level": 1})
            out = io.BytesIO()
            big.save(out, format=fmt, **options)
            data, ext = out.getvalue(), "jpg" if i < jpegs else "png"
        else:
            data, ext = _png16(np.asarray(big), rgb=(i - jpegs - pngs) % 2 == 0), "png"
        with open(os.path.join(target, f"big-{i:03d}.{ext}"), "wb") as f:
            f.write(data)
        sizes.append(len(data))
    return sizes


def _png16(photo: np.ndarray, rgb: bool) -> bytes:
    """A 16-bit PNG (48-bit RGB, or 16-bit grayscale) of an 8-bit RGB array: OpenCV writes 16 bits per
    channel, Pillow cannot for RGB."""
    import cv2

    wide = photo.astype(np.uint16) * 257  # 0..255 -> 0..65535
    pixels = cv2.cvtColor(wide, cv2.COLOR_RGB2BGR) if rgb else cv2.cvtColor(wide, cv2.COLOR_RGB2GRAY)
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("OpenCV could not encode a 16-bit PNG")
    return encoded.tobytes()


def run_job(args: list, log: str, heap: str, timeout: float) -> tuple:
    """One ``./spark-submit.sh`` job with a JVM heap of ``heap``: (seconds, JVM peak MB, Python worker
    peak MB, Python workers). A job past ``timeout`` is killed: a JVM out of heap in the thread that feeds
    a Python worker leaves its task waiting for ever."""
    started = time.monotonic()
    env = {**os.environ, "SPARK_SUBMIT_OPTS_EXTRA": f"--driver-memory {heap}"}
    with open(log, "w") as out:
        job = subprocess.Popen([LAUNCHER, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        with TreePeak(job.pid) as peak:
            try:
                job.wait(timeout)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait()
    if job.returncode != 0:
        kept = os.path.join(tempfile.gettempdir(), f"bench-memory-{args[0]}-failed.log")
        shutil.copy(log, kept)
        raise SystemExit(f"{args[0]} failed (exit {job.returncode}) with a {heap} heap; its log: {kept}")
    return time.monotonic() - started, peak.jvm, peak.python, len(peak.workers)


def args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=SHARED_PHOTOS)
    parser.add_argument("--megapixels", type=float, nargs="+",
                        default=[load_config().ingest.max_pixels / 1e6, 24.0],
                        help="image sizes to run, each also set as ingest.max_pixels (default: the default max_pixels, and 24)")
    parser.add_argument("--jpeg", type=int, default=24, help="JPEG photos per size")
    parser.add_argument("--png", type=int, default=8, help="PNG photos per size")
    parser.add_argument("--png16", type=int, default=0,
                        help="16-bit PNG photos per size (alternately 48-bit RGB and 16-bit grayscale)")
    parser.add_argument("--heap", default="2g", help="JVM heap (local mode: driver and executor in one JVM)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a job may take")
    return parser


def _main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    sources = sorted(os.path.join(d, f) for d, _, fs in os.walk(args.source) for f in fs if f.endswith(".jpg"))
    rows = []
    for megapixels in args.megapixels:
        pixels = int(megapixels * 1e6)
        work = tempfile.mkdtemp(prefix="bench-memory-")
        try:
            sizes = make_images(sources, os.path.join(work, "raw"), pixels, args.jpeg, args.png, args.png16)
            common = ["--set", f"ingest.max_pixels={pixels}", "--set", f"workdir={json.dumps(work)}",
                      "--set", "progress.interval_seconds=0"]
            warehouse = os.path.join(work, "warehouse")
            # (name, arguments, the copy of the ingested tables it runs on, or None for the first warehouse)
            jobs = [("ingest", ["ingest", "--input", os.path.join(work, "raw"), "--warehouse", warehouse], None),
                    ("preprocess, opencv", ["preprocess", "--warehouse", warehouse], None)]
            for backend in ("pil", "dali-cpu"):
                copy = os.path.join(work, f"warehouse-{backend}")
                jobs.append((f"preprocess, {backend}",
                             ["preprocess", "--warehouse", copy, "--set", f"preprocess.backend={backend}"], copy))
            jobs.append(("export", ["export", "--warehouse", warehouse, "--output", os.path.join(work, "shards")], None))
            for name, job, copy in jobs:
                if copy is not None:
                    shutil.copytree(warehouse, copy, ignore=shutil.ignore_patterns("processed"))
                seconds, jvm, python, workers = run_job(job + common, os.path.join(work, "job.log"), args.heap, args.timeout)
                rows.append((megapixels, len(sizes), max(sizes) / 1e6, name, seconds, jvm, python, workers))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores, local[*], JVM heap {args.heap}; images of the size given, {args.jpeg} JPEG q90 "
          f"+ {args.png} PNG + {args.png16} 16-bit PNG each\n")
    print("| image size | images | largest file | job | seconds | JVM peak RSS | peak RSS per Python worker | Python workers |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for megapixels, count, largest, name, seconds, jvm, python, workers in rows:
        print(f"| {megapixels:.1f} Mpx | {count} | {largest:.1f} MB | {name} | {seconds:.0f} | {jvm:.0f} MB "
              f"| {python:.0f} MB | {workers} |")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
