"""A labelled near-duplicate set built from real photos: each photo with its true variants (re-encoded at
several qualities, resized, slightly cropped, brightness-shifted, stored rotated with the EXIF orientation
that turns it back, and combinations), beside the other photos, which are distinct from it, and hard
negatives: two framings of the same photo (its left and right 60 %), the same scene but not a copy.

Used by tests/test_near_duplicates.py (precision and recall of ingest's near-duplicate check) and by
benchmarks/bench_near_duplicates.py (the same at larger sizes, and the pairs examined per image)."""
from __future__ import annotations

import io
from itertools import combinations
from typing import Iterable

from PIL import Image, ImageEnhance, ImageOps

from imgshards import imaging
from imgshards.ingest.near_duplicates import aspect_key, node_key

# EXIF orientation 6: the stored pixels are turned 90 degrees counter-clockwise from how they display.
_ORIENTATION = 0x0112


def _jpeg(img: Image.Image, quality: int = 90, exif: bytes | None = None) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
    return out.getvalue()


def _crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))


def variants(img: Image.Image) -> dict[str, bytes]:
    """The true near-duplicates of ``img`` (oriented RGB), as JPEG bytes by kind."""
    w, h = img.size
    exif = Image.Exif()
    exif[_ORIENTATION] = 6
    return {
        "q95": _jpeg(img, 95),
        "q75": _jpeg(img, 75),
        "q50": _jpeg(img, 50),
        "half": _jpeg(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), 90),
        "three_quarters_q60": _jpeg(img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BILINEAR), 60),
        "crop_5pct": _jpeg(_crop(img, 0.025, 0.025, 0.025, 0.025), 90),
        "crop_corner_4pct": _jpeg(_crop(img, 0.04, 0.0, 0.0, 0.04), 90),
        "brighter": _jpeg(ImageEnhance.Brightness(img).enhance(1.25), 90),
        "darker": _jpeg(ImageEnhance.Brightness(img).enhance(0.8), 90),
        "exif_rotated": _jpeg(img.transpose(Image.Transpose.ROTATE_90), 90, exif.tobytes()),
        "exif_rotated_crop_q70": _jpeg(_crop(img, 0.04, 0.04, 0.0, 0.0).transpose(Image.Transpose.ROTATE_90), 70,
                                       exif.tobytes()),
    }


def framings(img: Image.Image) -> dict[str, bytes]:
    """Two framings of the same scene that are not copies of each other: the left and right 60 %."""
    return {"left": _jpeg(_crop(img, 0.0, 0.0, 0.4, 0.0)), "right": _jpeg(_crop(img, 0.4, 0.0, 0.0, 0.0))}


def labelled_set(photos: Iterable[str], with_variants: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """(files, group): file name -> JPEG bytes, and file name -> the group of images that are copies of one
    another. The first ``with_variants`` photos come with their variants (one group each) and two framings
    (a group each); every other photo is a group of its own."""
    files: dict[str, bytes] = {}
    group: dict[str, str] = {}
    for i, path in enumerate(sorted(photos)):
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened).convert("RGB")
        name = f"p{i:04d}"
        files[f"{name}.jpg"] = _jpeg(img, 92)
        group[f"{name}.jpg"] = name
        if i < with_variants:
            for kind, data in variants(img).items():
                files[f"{name}_{kind}.jpg"] = data
                group[f"{name}_{kind}.jpg"] = name
            for kind, data in framings(img).items():
                files[f"{name}_{kind}.jpg"] = data
                group[f"{name}_{kind}.jpg"] = f"{name}_{kind}"
    return files, group


def nodes(files: dict) -> dict:
    """File name -> its near-duplicate node key, from the hashes and the header's size, as ingest makes it."""
    out = {}
    for name, data in files.items():
        found = imaging.fingerprint(data, 10**9)
        with Image.open(io.BytesIO(data)) as img:
            out[name] = node_key(found.phash, found.fine, aspect_key(*img.size))
    return out


def pairs_in_clusters(cluster_of: dict) -> set:
    """Every two names that share a cluster ({name: cluster}; a name whose cluster is None is in none)."""
    members: dict[str, list] = {}
    for name, cluster in cluster_of.items():
        if cluster is not None:
            members.setdefault(cluster, []).append(name)
    return {pair for names in members.values() for pair in combinations(sorted(names), 2)}


def precision_recall(found_pairs: set, group: dict[str, str]) -> dict:
    """Precision and recall of ``found_pairs`` ({(name, name)} in either order) against the true pairs of
    ``group``: every two names of one group."""
    by_group: dict[str, list] = {}
    for name, g in group.items():
        by_group.setdefault(g, []).append(name)
    true = {frozenset(p) for names in by_group.values() for p in combinations(names, 2)}
    found = {frozenset(p) for p in found_pairs}
    hits = len(found & true)
    return {"true_pairs": len(true), "found_pairs": len(found), "correct": hits,
            "precision": hits / len(found) if found else 1.0, "recall": hits / len(true) if true else 1.0,
            "false_pairs": sorted(tuple(sorted(p)) for p in found - true)}
