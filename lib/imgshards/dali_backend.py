"""NVIDIA DALI backends for preprocess: the same graph on the CPU (``device_id=None``, no CUDA at all) or
on the GPU a Spark task was given (``mixed`` decode on that device).

DALI is imported lazily, inside the Python worker, and one pipeline per (device, size) is built on first
use and reused for every batch the worker handles: CUDA does not survive ``fork()``, and Spark's Python
workers are forked from a daemon, so nothing here runs at import or on the driver.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

MAX_BATCH = 64  # matches spark.sql.execution.arrow.maxRecordsPerBatch in conf/spark/*.conf
# Bounds on what the nvJPEG decoder keeps around per pipeline (bytes).
DEVICE_MEMORY_PADDING = 16 * 1024 * 1024
HOST_MEMORY_PADDING = 8 * 1024 * 1024

_PIPELINES: dict = {}


def center_square_roi(width: int, height: int) -> tuple:
    """Relative (y, x) start and end of the centered square: resized to size x size it is exactly
    'shorter side to size, then center crop', with sub-pixel precision (the same box Pillow resizes)."""
    side = min(width, height)
    x0, y0 = (width - side) / 2.0 / width, (height - side) / 2.0 / height
    return (np.float32([y0, x0]), np.float32([1.0 - y0, 1.0 - x0]))


def resize_crop_graph(encoded, roi_start, roi_end, *, decoder_device: str, size: int):
    """The DALI graph as a pure function: encoded bytes -> RGB -> the ROI (relative, per sample) resized
    to ``size`` x ``size`` (cubic, antialiased). ``decoder_device``: "cpu" or "mixed" (GPU)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    kwargs = {}
    if decoder_device == "mixed":
        kwargs = {"device_memory_padding": DEVICE_MEMORY_PADDING, "host_memory_padding": HOST_MEMORY_PADDING}
    images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB, **kwargs)
    return fn.resize(images, size=(size, size), roi_start=roi_start, roi_end=roi_end, roi_relative=True,
                     interp_type=types.INTERP_CUBIC, antialias=True)


def _pipeline(size: int, device_id: Optional[int]):
    key = (size, device_id)
    if key not in _PIPELINES:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        @pipeline_def(batch_size=MAX_BATCH, num_threads=1, device_id=device_id, prefetch_queue_depth=1,
                      exec_dynamic=False)
        def resize_crop_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, batch=True)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, batch=True)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, batch=True)
            return resize_crop_graph(encoded, roi_start, roi_end,
                                     decoder_device="cpu" if device_id is None else "mixed", size=size)

        pipe = resize_crop_pipeline()
        pipe.build()
        _PIPELINES[key] = pipe
        log.info("built DALI pipeline size=%d device_id=%s", size, device_id)
    return _PIPELINES[key]


def resize_crop(encoded: Sequence[bytes], sizes: Sequence[tuple], size: int, device_id: Optional[int]) -> list:
    """Run the graph over a batch of encoded images whose (width, height) are ``sizes``; returns
    ``size`` x ``size`` x 3 uint8 arrays in host memory."""
    pipe = _pipeline(size, device_id)
    results = []
    for start in range(0, len(encoded), MAX_BATCH):
        chunk = [np.frombuffer(data, dtype=np.uint8) for data in encoded[start : start + MAX_BATCH]]
        rois = [center_square_roi(w, h) for w, h in sizes[start : start + MAX_BATCH]]
        try:
            pipe.feed_input("encoded", chunk)
            pipe.feed_input("roi_start", [r[0] for r in rois])
            pipe.feed_input("roi_end", [r[1] for r in rois])
            (out,) = pipe.run()
        except RuntimeError:
            _PIPELINES.pop((size, device_id), None)  # a pipeline that failed is not reused
            raise
        if device_id is not None:
            out = out.as_cpu()
        results.extend(np.array(out[i]) for i in range(len(chunk)))
    return results


def cuda_usable(device_id: int) -> bool:
    """Whether the CUDA driver is present and has a device ``device_id`` (no CUDA context is kept)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    if cuda.cuInit(0) != 0:
        return False
    count = ctypes.c_int()
    return cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and device_id < count.value
