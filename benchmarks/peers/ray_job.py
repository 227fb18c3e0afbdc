"""The pipeline's job done by Ray Data: read the files, sha256, decode, orient, resize + center crop and
encode JPEG q90 in map_batches, write Parquet. Run by benchmarks/bench_peers.py with the Ray environment it
sets up (.work/ray-env) and lib/ on PYTHONPATH.

--transform pillow does it as Ray's image docs show a user: Pillow in map_batches (ImageOps.fit with
BICUBIC, which is also how torchvision's Resize + CenterCrop run on PIL images); --transform imgshards
runs this project's default transform (imgshards.imaging.opencv.process) instead.

    ray_job.py INPUT OUTPUT [--size 224] [--transform pillow|imgshards]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os

import numpy as np
import ray
from PIL import Image, ImageOps


def pillow(data: bytes, size: int) -> bytes:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = io.BytesIO()
    ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def imgshards(data: bytes, size: int) -> bytes:
    from imgshards.imaging import opencv

    return opencv.process(data, size=size, quality=90)[0]


def process_batch(batch: dict, size: int, transform: str) -> dict:
    function = pillow if transform == "pillow" else imgshards
    out = {"path": [], "sha256": [], "image": [], "reason": []}
    for path, data in zip(batch["path"], batch["bytes"]):
        out["path"].append(path)
        out["sha256"].append(hashlib.sha256(data).hexdigest())
        try:
            out["image"].append(function(data, size))
            out["reason"].append(None)
        except Exception as e:  # what a user's job does with a file it cannot read: note it, go on
            out["image"].append(None)
            out["reason"].append(type(e).__name__)
    return {name: np.array(values, dtype=object) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--transform", choices=("pillow", "imgshards"), default="pillow")
    args = parser.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    (ray.data.read_binary_files(args.input, include_paths=True)
     .map_batches(process_batch, fn_kwargs={"size": args.size, "transform": args.transform}, batch_size=64)
     .write_parquet(args.output))


if __name__ == "__main__":
    main()
