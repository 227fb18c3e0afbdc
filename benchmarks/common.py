"""What the benchmarks share: the checkout's paths, a local Spark session with its Delta jars, the Spark
profiles' settings, and photos replicated to any count. Checkout-only: none of this is in the package."""
from __future__ import annotations

import os
import struct

from imgshards.session import build_session, checkout_jars, read_properties

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARED_PHOTOS = os.path.join(ROOT, "..", "shared", "datasets", "hymenoptera")
LAUNCHER = os.path.join(ROOT, "spark-submit.sh")


def local_session(master: str, app_name: str, conf: dict = None):
    """A Delta-enabled session from this checkout's jars (scripts/setup.sh); the caller stops it."""
    return build_session(master, app_name, conf, jars_dir=checkout_jars(ROOT))


def profile_settings(profile: str) -> dict:
    """The settings of conf/spark/<profile>.conf (those spark-submit.sh applies over the defaults)."""
    return read_properties(os.path.join(ROOT, "conf", "spark", profile + ".conf"))


def jpeg_with_comment(data: bytes, comment: bytes) -> bytes:
    """The same JPEG with a COM segment after SOI: identical pixels, different bytes (and sha256)."""
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    return data[:2] + segment + data[2:]


def replicate_dataset(source: str, target: str, min_files: int) -> int:
    """Copy the images under ``source`` into ``target`` (same class folders) until there are at least
    ``min_files``; each JPEG copy gets a distinct COM segment, so copies are not byte duplicates.
    Non-JPEG files are copied once. Returns the number of files written. Used by the benchmarks."""
    originals = []
    for folder, _, names in os.walk(source):
        for name in sorted(names):
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                originals.append(os.path.join(folder, name))
    originals.sort()
    jpegs = [p for p in originals if p.lower().endswith((".jpg", ".jpeg"))]
    if not jpegs:
        raise ValueError(f"no JPEG files under {source}")
    written = 0
    copy = 0
    while written < min_files:
        for path in originals if copy == 0 else jpegs:
            with open(path, "rb") as f:
                data = f.read()
            label = os.path.basename(os.path.dirname(path))
            stem, ext = os.path.splitext(os.path.basename(path))
            if copy:
                data = jpeg_with_comment(data, f"imgshards copy {copy}".encode())
            out = os.path.join(target, label, f"{stem}_c{copy:03d}{ext}")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(data)
            written += 1
        copy += 1
    return written
