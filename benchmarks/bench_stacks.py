"""Benchmark: the default stack (spark4: Spark 4.2, Delta 4.4, pyarrow 26, numpy 2) beside the Spark 3.5 line
(spark35), in one run, alternating between them:
  - the quick start: `./spark-submit.sh pipeline` on the generated sample into fresh tables (the sample made
    beforehand, as the README's first run makes it once), then the same command again with nothing new;
  - bench_preprocess.py (the loop, the job with pil and dali-cpu, the naive UDF) in each stack's Python,
    its table printed as it is.
Each stack is set up first (scripts/setup.sh --stack) and its launcher warmed by one short job, so that the
one-time class-data archive is not timed. Prints Markdown tables; whole-process wall times.

    .venv/bin/python benchmarks/bench_stacks.py [--rounds 2] [--photos 1000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import LAUNCHER, ROOT

STACKS = {"spark4": ".venv", "spark35": ".venv-spark35"}


def run(command: list, stack: str, log: str) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "IMGSHARDS_STACK": stack})
    if result.returncode != 0:
        raise SystemExit(f"{stack}: {' '.join(command[:3])} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - started


def quick_start(stack: str, work: str, sample: str) -> tuple:
    """(first run, re-run) seconds of the quick start's pipeline into fresh tables under ``work``."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.symlink(sample, os.path.join(work, "sample"))
    os.symlink(sample + ".complete", os.path.join(work, "sample.complete"))
    command = [LAUNCHER, "pipeline", "--warehouse", os.path.join(work, "warehouse"),
               "--output", os.path.join(work, "shards"), "--set", f"workdir={work}"]
    first = run(command, stack, os.path.join(work, "first.log"))
    again = run(command, stack, os.path.join(work, "again.log"))
    return first, again


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="quick starts per stack, alternating")
    parser.add_argument("--photos", type=int, default=1000, help="bench_preprocess.py --photos")
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="bench-stacks-")
    try:
        for stack in STACKS:
            subprocess.run([os.path.join(ROOT, "scripts", "setup.sh"), "--stack", stack], check=True)
            run([LAUNCHER, "history", "--warehouse", os.path.join(scratch, "warm")], stack,
                os.path.join(scratch, f"warm-{stack}.log"))
        # The sample, made once by the default stack's job (it is deterministic), shared by every run.
        made = os.path.join(scratch, "made")
        run([LAUNCHER, "pipeline", "--warehouse", os.path.join(made, "warehouse"), "--output",
             os.path.join(made, "shards"), "--set", f"workdir={made}"], "spark4", os.path.join(scratch, "sample.log"))
        sample = os.path.join(made, "sample")
        times: dict = {stack: [] for stack in STACKS}
        for _ in range(args.rounds):
            for stack in STACKS:
                times[stack].append(quick_start(stack, os.path.join(scratch, stack), sample))
        preprocess = {}
        for stack, venv in STACKS.items():
            result = subprocess.run([os.path.join(ROOT, venv, "bin", "python"),
                                     os.path.join(ROOT, "benchmarks", "bench_preprocess.py"),
                                     "--photos", str(args.photos), "--large", "0"],
                                    cwd=ROOT, capture_output=True, text=True, env={**os.environ, "IMGSHARDS_STACK": stack})
            if result.returncode != 0:
                raise SystemExit(f"bench_preprocess.py on {stack} failed:\n{result.stderr[-3000:]}")
            preprocess[stack] = result.stdout.strip()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{os.cpu_count()} cores; the quick start (240-image sample), median of {args.rounds} runs each, "
          "alternating stacks\n")
    print("| stack | first run, s | re-run with nothing new, s |")
    print("| --- | ---: | ---: |")
    medians = {}
    for stack, runs in times.items():
        medians[stack] = [statistics.median(r[i] for r in runs) for i in (0, 1)]
        print(f"| {stack} | {medians[stack][0]:.1f} | {medians[stack][1]:.1f} |")
    print(f"| spark4 / spark35 | {medians['spark4'][0] / medians['spark35'][0]:.2f} "
          f"| {medians['spark4'][1] / medians['spark35'][1]:.2f} |")
    for stack, table in preprocess.items():
        print(f"\nbench_preprocess.py --photos {args.photos} --large 0 on {stack}:\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
