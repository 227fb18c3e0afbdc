"""The pipeline's job as a Ray Data user would write it: read the files, sha256 and the same
imgshards.imaging.process (decode, orient, resize + crop, JPEG) in map_batches, write Parquet. Run by
benchmarks/bench_peers.py with the Ray environment it sets up (.work/ray-env) and lib/ on PYTHONPATH.

    ray_job.py INPUT OUTPUT [--size 224]
"""
from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np
import ray

from imgshards import imaging


def process_batch(batch: dict, size: int) -> dict:
    out = {"path": [], "sha256": [], "image": [], "reason": []}
    for path, data in zip(batch["path"], batch["bytes"]):
        out["path"].append(path)
        out["sha256"].append(hashlib.sha256(data).hexdigest())
        try:
            image, _, _ = imaging.process(data, size=size, quality=90)
            out["image"].append(image)
            out["reason"].append(None)
        except imaging.ImageError as e:
            out["image"].append(None)
            out["reason"].append(e.reason)
    return {name: np.array(values, dtype=object) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    (ray.data.read_binary_files(args.input, include_paths=True)
     .map_batches(process_batch, fn_kwargs={"size": args.size}, batch_size=64)
     .write_parquet(args.output))


if __name__ == "__main__":
    main()
