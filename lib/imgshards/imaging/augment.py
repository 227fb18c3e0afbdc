"""Offline augmentation: which copies to make, and each copy's random parameters.

Everything random is drawn here, in plain Python, from one seed per copy; DALI then runs deterministic
operators with those parameters. So a copy depends only on (its parent's bytes, its seed, the settings):
not on the batch it landed in, the partitioning, the worker or the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from imgshards.imaging.geometry import Geometry, geometry

if TYPE_CHECKING:  # the settings' type only: imaging imports nothing above it
    from imgshards.config import AugmentConfig


@dataclass(frozen=True)
class AugmentParams:
    """One copy's parameters: the geometry (source box, resized size, offset) and the op values."""

    geometry: Geometry
    flip: bool = False
    angle: float = 0.0
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    blur_sigma: float = 0.0


def copies_per_image(class_sizes: dict, copies: int, balance: bool) -> dict:
    """For each class (name -> images in the augmented splits): (copies every image gets, how many of
    the class's images get one more). Without balancing every image gets ``copies``; with it each class
    is brought to (largest class) x (1 + copies) samples, spread evenly over its images."""
    largest = max(class_sizes.values(), default=0)
    plan = {}
    for name, n in class_sizes.items():
        if n == 0:
            continue
        extra = (largest if balance else n) * (1 + copies) - n
        plan[name] = divmod(extra, n)
    return plan


def sample_params(seed: int, width: int, height: int, size: int, settings: AugmentConfig,
                  resize: str = "crop") -> AugmentParams:
    """Draw a copy's parameters from ``seed`` for a (oriented) width x height image. The draws happen in
    a fixed order whatever ops are on, so turning one op off does not change the others' values."""
    rng = np.random.default_rng(seed)
    crop = _random_resized_crop(rng, width, height, settings.crop_scale_min, settings.crop_ratio_max)
    flip = bool(rng.random() < settings.flip_probability)
    angle = float(rng.uniform(-settings.rotate_degrees, settings.rotate_degrees))
    brightness = float(rng.uniform(1 - settings.brightness, 1 + settings.brightness))
    contrast = float(rng.uniform(1 - settings.contrast, 1 + settings.contrast))
    saturation = float(rng.uniform(1 - settings.saturation, 1 + settings.saturation))
    hue = float(rng.uniform(-settings.hue_degrees, settings.hue_degrees))
    blur = bool(rng.random() < settings.blur_probability)
    sigma = float(rng.uniform(0.1, max(settings.blur_sigma_max, 0.1)))
    ops = settings.ops
    return AugmentParams(
        geometry=Geometry(crop, (size, size)) if "random_resized_crop" in ops else geometry(width, height, size, resize),
        flip=flip and "flip" in ops,
        angle=angle if "rotate" in ops else 0.0,
        brightness=brightness if "color" in ops else 1.0,
        contrast=contrast if "color" in ops else 1.0,
        saturation=saturation if "color" in ops else 1.0,
        hue=hue if "color" in ops else 0.0,
        blur_sigma=sigma if blur and "blur" in ops else 0.0,
    )


def _random_resized_crop(rng: np.random.Generator, width: int, height: int, scale_min: float,
                         ratio_max: float) -> tuple:
    """torchvision's RandomResizedCrop box: an area fraction in [scale_min, 1] and an aspect ratio in
    [1/ratio_max, ratio_max] (log-uniform), 10 tries, else the whole image's centered square-ish box."""
    area = width * height
    log_ratio = math.log(ratio_max)
    for _ in range(10):
        target = area * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(-log_ratio, log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (float(left), float(top), float(left + w), float(top + h))
    ratio = width / height
    if ratio < 1 / ratio_max:
        w, h = width, int(round(width * ratio_max))
    elif ratio > ratio_max:
        w, h = int(round(height * ratio_max)), height
    else:
        w, h = width, height
    x, y = (width - w) / 2.0, (height - h) / 2.0
    return (x, y, x + w, y + h)


def dali_inputs(params: Optional[AugmentParams], geo: Geometry, width: int, height: int, size: int) -> dict:
    """The per-sample inputs of the DALI graph (see imgshards.imaging.dali.INPUTS) for one image."""
    if params is not None:
        geo = params.geometry
    left, top, right, bottom = geo.relative_box(width, height)
    f32 = np.float32
    inputs: dict = {
        "roi_start": np.array([top, left], f32),
        "roi_end": np.array([bottom, right], f32),
        "out_size": np.array([geo.resized[1], geo.resized[0]], f32),
        # fn.crop's anchor is crop_pos * (input - crop); the letterbox offset is a negative anchor.
        "crop_pos_x": f32(geo.offset[0] / (size - geo.resized[0]) if geo.resized[0] < size else 0.5),
        "crop_pos_y": f32(geo.offset[1] / (size - geo.resized[1]) if geo.resized[1] < size else 0.5),
    }
    if params is not None:
        inputs.update(
            flip=np.int32(params.flip), angle=f32(params.angle), brightness=f32(params.brightness),
            contrast=f32(params.contrast), saturation=f32(params.saturation), hue=f32(params.hue),
            # sigma 0 would make DALI derive it from a window size; this small a sigma is the identity.
            blur_sigma=f32(max(params.blur_sigma, 1e-3)),
        )
    return inputs
