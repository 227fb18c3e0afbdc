"""The preprocess transform of one batch, without Spark: raw image bytes (and, for augmented copies, their
seeds) -> processed images or quarantine reasons, on the backend and device a task was placed on.

The Spark job (imgshards.preprocess) runs :func:`process_series` inside an iterator pandas UDF;
benchmarks and tools call it directly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from imgshards import dali_backend, imaging
from imgshards.augment import dali_inputs, sample_params
from imgshards.config import PreprocessConfig

# The columns of process_series' result, in order (the Spark job's result struct has the same fields).
RESULT_COLUMNS = ("image", "width", "height", "backend", "device", "task_gpu", "reason", "detail")


@dataclass(frozen=True)
class Placement:
    """Where a task's images are processed: the backend that runs, its DALI device id (None: CPU), the
    GPU address Spark gave the task (None: none), and why a requested GPU was not used."""

    backend: str
    device_id: Optional[int]
    task_gpu: Optional[str]
    note: str = ""

    @property
    def device(self) -> str:
        return "cpu" if self.device_id is None else f"gpu:{self.device_id}"


def place(requested: str, task_gpu: Optional[str], cuda_usable) -> Placement:
    """Resolve the configured backend for a task. The GPU is the one Spark assigned (never a fixed 0)."""
    if requested in ("pil", "dali-cpu"):
        return Placement(requested, None, task_gpu)
    if requested == "dali-gpu":
        if task_gpu is None:
            raise RuntimeError("preprocess.backend=dali-gpu but Spark gave this task no GPU: use the gpu profile "
                               "(spark.task.resource.gpu.amount) or backend auto")
        return Placement("dali-gpu", int(task_gpu), task_gpu)
    if task_gpu is not None and cuda_usable(int(task_gpu)):
        return Placement("dali-gpu", int(task_gpu), task_gpu)
    why = "the task has no GPU" if task_gpu is None else f"GPU {task_gpu} was assigned but CUDA cannot use it"
    return Placement("dali-cpu", None, task_gpu, note=f"auto: {why}, falling back to dali-cpu")


def process_series(contents: pd.Series, seeds: Optional[pd.Series], settings: PreprocessConfig, max_pixels: int,
                   placement: Placement = Placement("pil", None, None)) -> pd.DataFrame:
    """One Arrow batch of raw image bytes -> a frame of RESULT_COLUMNS. ``seeds``: null for a plain sample,
    else the seed of an augmented copy (made by DALI, on the task's GPU when it runs there).

    With a DALI placement, plain RGB/L JPEGs and PNGs go through DALI in one batch; the rest (other modes,
    transparency, EXIF orientation) through Pillow, and each row records the backend that made it.
    Augmented copies of such images are decoded by Pillow and handed to DALI as PNG."""
    rows: list = [None] * len(contents)
    base_spec = dali_backend.GraphSpec(settings.size, settings.resize == "letterbox", settings.pad_value,
                                       device_id=placement.device_id)
    augment_spec = dataclasses.replace(base_spec, ops=settings.augment.ops)
    dali_base, dali_augment = [], []  # (row, encoded bytes, per-sample inputs)
    for i, data in enumerate(contents):
        seed = None if seeds is None or pd.isna(seeds.iloc[i]) else int(seeds.iloc[i])
        use_dali = placement.backend != "pil" or seed is not None
        try:
            plain_size = imaging.plain_rgb_jpeg_or_png(data, max_pixels) if use_dali else None
            if seed is not None:
                if plain_size is None:  # Pillow decodes what DALI would get wrong; DALI augments it
                    img = imaging.decode(data, max_pixels)
                    data, plain_size = imaging.encode(img, "png", 0), img.size
                width, height = plain_size
                params = sample_params(seed, width, height, settings.size, settings.augment, settings.resize)
                dali_augment.append((i, data, dali_inputs(params, None, width, height, settings.size)))
            elif plain_size:
                width, height = plain_size
                geo = imaging.geometry(width, height, settings.size, settings.resize)
                dali_base.append((i, data, dali_inputs(None, geo, width, height, settings.size)))
            else:
                image, _, _ = imaging.process(
                    data, size=settings.size, output_format=settings.output_format, quality=settings.quality,
                    max_pixels=max_pixels, draft=settings.draft, resize=settings.resize, pad_value=settings.pad_value,
                )
                rows[i] = (image, settings.size, settings.size, "pil", "cpu", placement.task_gpu, None, None)
        except imaging.ImageError as e:
            rows[i] = (None, None, None, "pil", "cpu", placement.task_gpu, e.reason, e.detail)
    for items, spec in ((dali_base, base_spec), (dali_augment, augment_spec)):
        backend = "dali-cpu" if spec.device_id is None else "dali-gpu"
        device = "cpu" if spec.device_id is None else f"gpu:{spec.device_id}"
        for i, array in zip([item[0] for item in items], _run_dali(items, spec)):
            if isinstance(array, imaging.ImageError):
                rows[i] = (None, None, None, backend, device, placement.task_gpu, array.reason, array.detail)
            else:
                image = imaging.encode(array, settings.output_format, settings.quality)
                rows[i] = (image, settings.size, settings.size, backend, device, placement.task_gpu, None, None)
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _run_dali(items: list, spec: dali_backend.GraphSpec) -> list:
    """Arrays for (row, bytes, inputs) items; an ImageError in place of each image DALI rejected."""
    if not items:
        return []
    try:
        return dali_backend.run([item[1] for item in items], [item[2] for item in items], spec)
    except RuntimeError:
        # One bad image fails a whole DALI batch: redo them one by one so only the bad one is quarantined.
        arrays = []
        for _, data, inputs in items:
            try:
                arrays.extend(dali_backend.run([data], [inputs], spec))
            except RuntimeError as e:
                arrays.append(imaging.ImageError("corrupt", f"DALI: {str(e).splitlines()[0]}"))
        return arrays


