"""The preprocess transform of one batch, without Spark: raw image bytes (and, for augmented copies, their
seeds) -> processed images or quarantine reasons, on the backend and device a task was placed on.

The Spark job (imgshards.preprocess.run) runs :func:`process_series` inside an iterator pandas UDF;
benchmarks and tools call it directly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from imgshards import imaging
from imgshards.config import PreprocessConfig
from imgshards.imaging import dali, opencv
from imgshards.imaging.augment import dali_inputs, sample_params
from imgshards.io.filesystems import open_source

log = logging.getLogger(__name__)
_DALI_DECODER_FAILED = False  # set for the rest of the process once DALI's decoder rejected a batch

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
    if requested in ("opencv", "pil", "dali-cpu"):
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


def fetch_sources(contents: pd.Series, paths: pd.Series, sizes: pd.Series, shas: pd.Series, s3: tuple) -> pd.Series:
    """Each row's image bytes: its ``content``, or, for a row ingested by reference (content null), the
    source file read by path in this worker (the bytes never pass through the JVM). A source that is gone
    becomes an :class:`imaging.ImageError` ``unreadable``, one whose size or sha256 differs from ingest's
    ``changed_since_ingest``; :func:`process_series` quarantines those. ``s3``: (endpoint, path style,
    region) as the session has them, for s3:// and s3a:// paths (credentials come the standard AWS way)."""
    out = list(contents)
    for i, data in enumerate(out):
        if data is None:
            out[i] = _read_source(paths.iloc[i], int(sizes.iloc[i]), shas.iloc[i], s3)
    return pd.Series(out, index=contents.index, dtype=object)


def _read_source(path: str, size: int, sha256: str, s3: tuple):
    try:
        with open_source(path, s3) as f:
            if f.size() != size:
                return imaging.ImageError("changed_since_ingest", f"{f.size()} bytes now, {size} at ingest")
            data = f.read()
    except (OSError, ValueError) as e:  # gone (FileNotFoundError), denied, unreachable
        return imaging.ImageError("unreadable", f"the referenced source could not be read: {e}"[:500])
    if hashlib.sha256(data).hexdigest() != sha256:
        return imaging.ImageError("changed_since_ingest", "the source's sha256 differs from the one ingest recorded")
    return data


def process_series(contents: pd.Series, seeds: Optional[pd.Series], settings: PreprocessConfig, max_pixels: int,
                   placement: Placement = Placement("opencv", None, None)) -> pd.DataFrame:
    """One Arrow batch of raw image bytes -> a frame of RESULT_COLUMNS. ``seeds``: null for a plain sample,
    else the seed of an augmented copy (made by DALI, on the task's GPU when it runs there).

    ``opencv`` and ``pil`` process image by image (:func:`imgshards.imaging.opencv.process`,
    :func:`imgshards.imaging.process`). With a DALI placement, plain RGB/L JPEGs and PNGs go through DALI in
    one batch; the rest (other modes, transparency, EXIF orientation) through Pillow, and each row records
    the backend that made it.
    Augmented copies of such images are decoded by Pillow and handed to DALI as PNG. Pillow is the judge
    of bad data: a batch DALI rejects is redone the Pillow way, and an image is quarantined only if Pillow
    fails on it too."""
    rows: list = [None] * len(contents)
    base_spec = dali.GraphSpec(settings.size, settings.resize == "letterbox", settings.pad_value,
                                       device_id=placement.device_id)
    augment_spec = dataclasses.replace(base_spec, ops=settings.augment.ops)
    dali_base, dali_augment = [], []  # (row, encoded bytes, per-sample inputs)

    def quarantine(i: int, error: imaging.ImageError) -> None:
        rows[i] = (None, None, None, "pil", "cpu", placement.task_gpu, error.reason, error.detail)

    one_by_one = "opencv" if placement.backend == "opencv" else "pil"
    transform = opencv.process if one_by_one == "opencv" else imaging.process

    def singly(i: int, data: bytes) -> None:
        try:
            image, _, _ = transform(
                data, size=settings.size, output_format=settings.output_format, quality=settings.quality,
                max_pixels=max_pixels, draft=settings.draft, resize=settings.resize, pad_value=settings.pad_value)
            rows[i] = (image, settings.size, settings.size, one_by_one, "cpu", placement.task_gpu, None, None)
        except imaging.ImageError as e:
            quarantine(i, e)

    # After DALI's decoder failed once in this process, it decodes nothing more here: a later batch of
    # hostile JPEGs could crash the process (seen with DALI 2.4 on the edge-cases corpus).
    dali_decodes = not _DALI_DECODER_FAILED
    for i, data in enumerate(contents):
        if isinstance(data, imaging.ImageError):  # a referenced source that could not be used (fetch_sources)
            quarantine(i, data)
            continue
        seed = None if seeds is None or pd.isna(seeds.iloc[i]) else int(seeds.iloc[i])
        try:
            if seed is not None:
                dali_augment.append(_augment_item(i, data, seed, settings, max_pixels, not dali_decodes))
            elif (dali_decodes and placement.backend not in ("opencv", "pil")
                  and (plain_size := imaging.plain_rgb_jpeg_or_png(data, max_pixels))):
                width, height = plain_size
                geo = imaging.geometry(width, height, settings.size, settings.resize)
                dali_base.append((i, data, dali_inputs(None, geo, width, height, settings.size)))
            else:
                singly(i, data)
        except imaging.ImageError as e:
            quarantine(i, e)
    arrays = _run_dali(dali_base, base_spec)
    if arrays is None:  # DALI rejected the batch: Pillow decides, image by image
        for i, data, _ in dali_base:
            singly(i, data)
        dali_base, arrays = [], []
    copies = _run_dali(dali_augment, augment_spec)
    if copies is None:  # augment what Pillow decodes of the originals instead
        retry = []
        for i, _, _ in dali_augment:
            try:
                retry.append(_augment_item(i, contents.iloc[i], int(seeds.iloc[i]), settings, max_pixels, True))
            except imaging.ImageError as e:
                quarantine(i, e)
        dali_augment, copies = retry, _run_dali(retry, augment_spec)
        if copies is None:
            for i, _, _ in retry:
                quarantine(i, imaging.ImageError("corrupt", "DALI rejected the image after Pillow decoded it"))
            dali_augment, copies = [], []
    # Both graphs run on the placement's device: DALI's CPU backend when it has none, even for backend pil.
    backend = "dali-cpu" if placement.device_id is None else "dali-gpu"
    for (i, _, _), array in zip(dali_base + dali_augment, arrays + copies):
        image = imaging.encode(array, settings.output_format, settings.quality)
        rows[i] = (image, settings.size, settings.size, backend, placement.device, placement.task_gpu, None, None)
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _augment_item(i: int, data: bytes, seed: int, settings: PreprocessConfig, max_pixels: int,
                  decode_with_pillow: bool = False) -> tuple:
    """(row, bytes for DALI, per-sample inputs) of an augmented copy. Images DALI would decode differently
    (or did not decode) are decoded by Pillow and handed over as PNG."""
    plain_size = None if decode_with_pillow else imaging.plain_rgb_jpeg_or_png(data, max_pixels)
    if plain_size is None:
        img = imaging.decode(data, max_pixels)
        data, plain_size = imaging.encode(img, "png", 0), img.size
    width, height = plain_size
    params = sample_params(seed, width, height, settings.size, settings.augment, settings.resize)
    return (i, data, dali_inputs(params, None, width, height, settings.size))


def _run_dali(items: list, spec: dali.GraphSpec) -> Optional[list]:
    """Arrays for (row, bytes, inputs) items, or None when DALI rejected the batch (one bad image fails
    a whole batch; the caller then takes the Pillow way)."""
    global _DALI_DECODER_FAILED
    if not items:
        return []
    try:
        return dali.run([item[1] for item in items], [item[2] for item in items], spec)
    except RuntimeError as e:
        if not _DALI_DECODER_FAILED:
            log.warning("DALI rejected a batch (%s); Pillow decodes in this worker from now on",
                        str(e).splitlines()[0])
        _DALI_DECODER_FAILED = True
        return None
