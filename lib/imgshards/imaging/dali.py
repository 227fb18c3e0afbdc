"""NVIDIA DALI backends for preprocess: the same graph on the CPU (``device_id=None``, no CUDA at all) or
on the GPU a Spark task was given (``mixed`` decode on that device).

DALI is imported lazily, inside the Python worker, and one pipeline per GraphSpec (size, padding, ops, device) is built on first
use and reused for every batch the worker handles: CUDA does not survive ``fork()``, and Spark's Python
workers are forked from a daemon, so nothing here runs at import or on the driver.
"""
from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

MAX_BATCH = 64  # the most rows preprocess puts in an Arrow batch (spark-defaults.conf, preprocess.batch_records)
# Bounds on what the nvJPEG decoder keeps around per pipeline (bytes).
DEVICE_MEMORY_PADDING = 16 * 1024 * 1024
HOST_MEMORY_PADDING = 8 * 1024 * 1024

_PIPELINES: dict = {}


@dataclass(frozen=True)
class GraphSpec:
    """What a pipeline is built for (and cached by): output size, letterbox padding, the augmentation
    ops applied after the resize (empty: none), and the device (None: CPU)."""

    size: int
    letterbox: bool = False
    pad_value: int = 0
    ops: tuple = ()
    device_id: Optional[int] = None

    @property
    def inputs(self) -> tuple:
        """The per-sample inputs the graph takes, besides the encoded bytes (see augment.dali_inputs)."""
        names = ["roi_start", "roi_end", "out_size"]
        if self.letterbox:
            names += ["crop_pos_x", "crop_pos_y"]
        op_inputs = {"rotate": ["angle"], "flip": ["flip"], "color": ["brightness", "contrast", "saturation", "hue"],
                     "blur": ["blur_sigma"]}
        for op in self.ops:
            names += op_inputs.get(op, [])
        return tuple(names)


def graph(encoded, inputs: dict, spec: GraphSpec):
    """The DALI graph as a pure function: encoded bytes -> RGB -> the ROI (relative, per sample) resized to
    ``out_size`` (cubic, antialiased) -> padded to size x size (letterbox) -> the augmentation ops with
    per-sample parameters. The decoder runs on the CPU, or "mixed" (nvJPEG) when there is a device."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    kwargs: dict = {}
    if spec.device_id is not None:
        kwargs = {"device_memory_padding": DEVICE_MEMORY_PADDING, "host_memory_padding": HOST_MEMORY_PADDING}
    images = fn.decoders.image(encoded, device="cpu" if spec.device_id is None else "mixed",
                               output_type=types.RGB, **kwargs)
    images = fn.resize(images, size=inputs["out_size"], roi_start=inputs["roi_start"], roi_end=inputs["roi_end"],
                       roi_relative=True, interp_type=types.INTERP_CUBIC, antialias=True)
    if spec.letterbox:
        images = fn.crop(images, crop=(spec.size, spec.size), crop_pos_x=inputs["crop_pos_x"],
                         crop_pos_y=inputs["crop_pos_y"], out_of_bounds_policy="pad", fill_values=spec.pad_value)
    if "rotate" in spec.ops:
        images = fn.rotate(images, angle=inputs["angle"], keep_size=True, fill_value=spec.pad_value,
                           interp_type=types.INTERP_LINEAR)
    if "flip" in spec.ops:
        images = fn.flip(images, horizontal=inputs["flip"])
    if "color" in spec.ops:
        images = fn.hsv(images, hue=inputs["hue"], saturation=inputs["saturation"])
        images = fn.brightness_contrast(images, brightness=inputs["brightness"], contrast=inputs["contrast"])
    if "blur" in spec.ops:
        images = fn.gaussian_blur(images, sigma=inputs["blur_sigma"])
    return images


def _pipeline(spec: GraphSpec):
    if spec not in _PIPELINES:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        @pipeline_def(batch_size=MAX_BATCH, num_threads=1, device_id=spec.device_id, prefetch_queue_depth=1,
                      exec_dynamic=False)
        def preprocess_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, batch=True)
            inputs = {name: fn.external_source(name=name, batch=True) for name in spec.inputs}
            return graph(encoded, inputs, spec)

        pipe = preprocess_pipeline()
        pipe.build()
        _PIPELINES[spec] = pipe
        log.info("built DALI pipeline %s", spec)
    return _PIPELINES[spec]


def run(encoded: Sequence[bytes], inputs: Sequence[dict], spec: GraphSpec) -> list:
    """Run the graph over encoded images with their per-sample ``inputs`` (dicts holding at least
    ``spec.inputs``); returns size x size x 3 uint8 arrays in host memory."""
    pipe = _pipeline(spec)
    results: list = []
    for start in range(0, len(encoded), MAX_BATCH):
        chunk = [np.frombuffer(data, dtype=np.uint8) for data in encoded[start : start + MAX_BATCH]]
        try:
            pipe.feed_input("encoded", chunk)
            for name in spec.inputs:
                pipe.feed_input(name, [sample[name] for sample in inputs[start : start + MAX_BATCH]])
            (out,) = pipe.run()
        except RuntimeError:
            _PIPELINES.pop(spec, None)  # a pipeline that failed is not reused
            raise
        if spec.device_id is not None:
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
