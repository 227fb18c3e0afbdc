"""The embedded sample dataset: a few hundred labeled images made on the spot, in every mode and layout
the pipeline has to handle, plus damaged files, duplicates, a hidden file and a non-image.

Classes are shapes (circle, square, triangle) drawn on noisy backgrounds, so a small CNN can learn them.
"""
from __future__ import annotations

import io
import os
import random
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
_MODES = ("RGB", "RGB", "RGB", "RGB", "L", "P", "RGBA", "CMYK", "I;16", "LA")


@dataclass
class SampleManifest:
    """What was written, so the pipeline's accounting can be checked against it."""

    root: str
    images: int = 0
    duplicates: int = 0
    label_conflicts: int = 0  # of the duplicates, those under another class than the copy kept
    damaged: dict = field(default_factory=dict)  # relative path -> expected quarantine reason
    hidden: int = 0
    non_image: int = 0
    per_class: Counter = field(default_factory=Counter)

    @property
    def files(self) -> int:
        return self.images + self.duplicates + len(self.damaged) + self.hidden + self.non_image


def draw_shape(label: str, width: int, height: int, rng: random.Random) -> Image.Image:
    """An RGB image of one shape in a random color on a noisy background."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    base = nrng.integers(0, 256, size=3)
    noise = nrng.normal(0, 25, size=(height, width, 3))
    background = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    r = int(side * rng.uniform(0.25, 0.4))
    cx = width // 2 + int(rng.uniform(-0.1, 0.1) * side)
    cy = height // 2 + int(rng.uniform(-0.1, 0.1) * side)
    color = tuple(int(255 - c) for c in base)
    if label == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif label == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return img


def encode(img: Image.Image, mode: str, rng: random.Random) -> tuple[bytes, str]:
    """Convert to ``mode`` and encode in a format that can hold it; returns (bytes, extension)."""
    out = io.BytesIO()
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(arr).save(out, format="PNG")
        return out.getvalue(), "png"
    if mode == "P":
        # Fast octree: the median cut of convert(palette=ADAPTIVE) was the larger part of making the sample.
        p = img.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
        p.info["transparency"] = 0
        p.save(out, format="PNG", transparency=0)
        return out.getvalue(), "png"
    if mode in ("RGBA", "LA"):
        converted = img.convert(mode)
        alpha = Image.new("L", img.size, 255)
        ImageDraw.Draw(alpha).rectangle((0, 0, img.size[0] // 8, img.size[1] // 8), fill=0)
        converted.putalpha(alpha)
        converted.save(out, format="PNG")
        return out.getvalue(), "png"
    if mode == "CMYK":
        img.convert("CMYK").save(out, format="JPEG", quality=90)
        return out.getvalue(), "jpg"
    if mode == "L":
        img.convert("L").save(out, format="JPEG", quality=90)
        return out.getvalue(), rng.choice(["jpg", "JPEG"])
    # RGB: mostly JPEG, some with an EXIF orientation, some PNG
    choice = rng.random()
    if choice < 0.2:
        img.save(out, format="PNG")
        return out.getvalue(), "png"
    if choice < 0.45:
        orientation = rng.choice([3, 6, 8, 2])
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(out, format="JPEG", quality=90, exif=exif.tobytes())
        return out.getvalue(), "jpg"
    img.save(out, format="JPEG", quality=rng.choice([75, 85, 95]))
    return out.getvalue(), rng.choice(["jpg", "jpeg", "JPG"])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: what a decompression bomb looks like at open()."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _write(root: str, relative: str, data: bytes) -> None:
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_sample_dataset(root: str, per_class: int = 80, seed: int = 0) -> SampleManifest:
    """Write the sample dataset under ``root`` (class folders); deterministic for a given seed."""
    rng = random.Random(seed)
    manifest = SampleManifest(root=root)
    written: list[str] = []
    for label in CLASSES:
        for i in range(per_class):
            width, height = rng.randint(48, 640), rng.randint(48, 640)
            data, ext = encode(draw_shape(label, width, height, rng), rng.choice(_MODES), rng)
            relative = f"{label}/{label}_{i:04d}.{ext}"
            _write(root, relative, data)
            written.append(relative)
            manifest.images += 1
            manifest.per_class[label] += 1
    # Exact duplicates under other names: counted as duplicates, not ingested twice.
    for i, source in enumerate(rng.sample(written, 3)):
        with open(os.path.join(root, source), "rb") as f:
            data = f.read()
        _write(root, f"{source.split('/')[0]}/copy_of_{i}_{os.path.basename(source)}", data)
        manifest.duplicates += 1
    # An exact duplicate filed under another class: a duplicate, and a label conflict.
    source = written[0]
    other = next(label for label in CLASSES if label != source.split("/")[0])
    with open(os.path.join(root, source), "rb") as f:
        _write(root, f"{other}/misfiled_{os.path.basename(source)}", f.read())
    manifest.duplicates += 1
    manifest.label_conflicts += 1
    # Damaged files, each with the reason the pipeline must give.
    jpeg = io.BytesIO()
    draw_shape("circle", 320, 240, rng).save(jpeg, format="JPEG", quality=90)
    damaged = {
        "circle/damaged_truncated.jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated"),
        "square/damaged_zero_byte.jpg": (b"", "zero_byte"),
        "triangle/damaged_not_an_image.png": (b"this is a text file with an image extension\n" * 20, "not_an_image"),
        "triangle/damaged_random_bytes.jpg": (bytes(rng.getrandbits(8) for _ in range(4096)), "not_an_image"),
        "square/damaged_bomb.png": (png_header_only(20000, 20000), "too_many_pixels"),
    }
    for relative, (data, reason) in damaged.items():
        _write(root, relative, data)
        manifest.damaged[relative] = reason
    # Skipped: a hidden file and a non-image.
    _write(root, "circle/.DS_Store", b"\x00\x00\x00\x01Bud1")
    manifest.hidden += 1
    _write(root, "README.txt", b"Sample dataset generated by imgshards.sample\n")
    manifest.non_image += 1
    return manifest
