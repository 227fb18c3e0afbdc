"""Near-duplicate findings: precision and recall on the labelled set (tests/near_duplicate_set.py), before and
after confirmation and star clusters, recall per kind of variant, and how the candidate stage scales (pairs of
dHashes compared per image as the collection grows).

    .venv/bin/python benchmarks/bench_near_duplicates.py [--variants 100] [--sizes 1000,4000,15000]

No Spark: the functions ingest runs on the driver (imgshards.ingest.near_duplicates), over the hashes ingest
stores (imgshards.imaging.fingerprint). Results in benchmarks/README.md."""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import io
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict

from PIL import Image, ImageOps

from imgshards.config import load_config
from imgshards.ingest.near_duplicates import _bands, near_pairs, stars

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import near_duplicate_set  # noqa: E402  (tests/ holds the labelled set, which the tests use too)

PHOTOS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "datasets", "hymenoptera")


def union_find(pairs) -> dict:
    """{node: its component's smallest node}: how clusters were made before (pairs chained transitively)."""
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent)}


def quality_table(files: dict, group: dict) -> None:
    settings = load_config(overrides=[]).ingest.near_duplicates
    node_of = near_duplicate_set.nodes(files)
    nodes = set(node_of.values())
    rows = []
    # None: the check is off (any fine distance, any shape).
    for label, d, confirm, shape, cluster in (
        ("before: dHash <= 4, union-find", 4, None, None, union_find),
        ("dHash <= 7, union-find", 7, None, None, union_find),
        ("dHash <= 7, star clusters", 7, None, None, stars),
        ("dHash <= 7, confirmed by the fine hash, star clusters", 7, settings.confirm_distance, None, stars),
        ("now: dHash <= 7, confirmed by the fine hash and the shape, star clusters", 7, settings.confirm_distance,
         settings.max_aspect_change, stars),
    ):
        s = dataclasses.replace(settings, max_distance=d, confirm_distance=confirm if confirm is not None else 256,
                                max_aspect_change=shape if shape is not None else float("inf"))
        confirmed, _ = near_pairs(nodes, nodes, s)
        centre = cluster(confirmed)
        found = near_duplicate_set.pairs_in_clusters({n: centre.get(k) for n, k in node_of.items()})
        scores = near_duplicate_set.precision_recall(found, group)
        biggest = max(Counter(c for c in (centre.get(k) for k in node_of.values()) if c is not None).values(), default=0)
        rows.append((label, scores["precision"], scores["recall"], len(scores["false_pairs"]), biggest))
    variants = [n for n, g in group.items() if "_" in n and g == n.split("_")[0]]
    print(f"\n{len(files)} images: {len(variants)} variants of {len({group[n] for n in variants})} photos, two "
          "framings of each of those, every other photo once\n")
    print("| clusters | precision | recall | false pairs | largest cluster |\n| --- | ---: | ---: | ---: | ---: |")
    for label, precision, recall, false, biggest in rows:
        print(f"| {label} | {precision:.4f} | {recall:.4f} | {false} | {biggest} |")
    # Recall per kind: does the variant share its original's cluster (now)?
    confirmed, _ = near_pairs(nodes, nodes, settings)
    centre = stars(confirmed)
    kinds: dict = defaultdict(list)
    for name, g in group.items():
        if "_" in name and g == name.split("_")[0]:
            original = g + ".jpg"
            c = centre.get(node_of[name])
            kinds[name.split("_", 1)[1][:-4]].append(c is not None and c == centre.get(node_of[original]))
    print("\n| variant | with its original |\n| --- | ---: |")
    for kind, found in kinds.items():
        print(f"| {kind} | {sum(found)}/{len(found)} |")


def distinct_images(photos: list, n: int):
    """Up to ``n`` distinct images made from the photos (four quarters and the centre, each in the eight
    turns and flips): content no two share. At most 40 per photo."""
    made = 0
    turns = (None, *Image.Transpose)
    for path in photos:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened).convert("RGB")
        w, h = img.size
        boxes = ((0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h),
                 (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
        for box in boxes:
            part = img.crop(box)
            for turn in turns:
                out = io.BytesIO()
                (part.transpose(turn) if turn is not None else part).save(out, "JPEG", quality=90)
                yield out.getvalue()
                made += 1
                if made == n:
                    return


def exact_band_examined(phashes: list, max_distance: int) -> int:
    """Pairs compared with exact bands (max_distance + 1 of them, no flipped bit): the scheme before."""
    n = max_distance + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    index: dict = defaultdict(set)
    examined = 0
    for i, h in enumerate(phashes):
        seen = set()
        offset = 0
        for band, width in enumerate(widths):
            seen |= index[(band, (h >> offset) & ((1 << width) - 1))]
            offset += width
        examined += len(seen)
        offset = 0
        for band, width in enumerate(widths):
            index[(band, (h >> offset) & ((1 << width) - 1))].add(i)
            offset += width
    return examined


def scaling_table(photos: list, sizes: list) -> None:
    settings = load_config(overrides=[]).ingest.near_duplicates
    hashed = list(near_duplicate_set.nodes(dict(enumerate(distinct_images(photos, max(sizes))))).values())
    sizes = sorted({min(n, len(hashed)) for n in sizes})
    bands, errors = _bands(settings.max_distance)
    print(f"\nPairs of dHashes compared per image (max_distance {settings.max_distance}: {len(bands)} bands of "
          f"{64 // len(bands)} bits, {errors} bit flipped per band)\n")
    print("| images | now: compared per image | candidates per image | confirmed per image | s | "
          f"exact bands, max_distance {settings.max_distance} | exact bands, max_distance 4 (before) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        nodes = set(hashed[:n])
        examined: Counter = Counter()
        start = time.perf_counter()
        confirmed, rejected = near_pairs(nodes, nodes, settings, examined)
        took = time.perf_counter() - start
        phashes = [int(key.split(":")[0]) for key in hashed[:n]]
        # near_pairs compares each pair from both sides (new against known, both all): half is per pair
        print(f"| {n:,} | {examined['pairs'] / n / 2:.1f} | {len(confirmed | rejected) / n:.3f} | {len(confirmed) / n:.3f} | "
              f"{took:.1f} | {exact_band_examined(phashes, settings.max_distance) / n:.1f} | "
              f"{exact_band_examined(phashes, 4) / n:.1f} |")


def sample_table() -> None:
    """Confirmed pairs and clusters on the quick start's generated sample, whose distinct images (exact copies
    left out, as ingest leaves them) are all false findings: one flat shape on a noisy background each, so
    that their grey layouts are alike."""
    from imgshards.sample import make_sample_dataset

    settings = load_config(overrides=[]).ingest.near_duplicates
    with tempfile.TemporaryDirectory() as root:
        make_sample_dataset(root)
        contents = {}
        for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    contents.setdefault(hashlib.sha256(f.read()).hexdigest(), path)
        files = {}
        for path in contents.values():
            with open(path, "rb") as f:
                data = f.read()
            try:
                near_duplicate_set.nodes({path: data})
            except Exception:  # the sample's damaged files: quarantined by ingest
                continue
            files[os.path.relpath(path, root)] = data
    nodes = set(near_duplicate_set.nodes(files).values())
    print(f"\nThe generated sample ({len(files)} distinct images, none a near-duplicate of another)\n")
    print("| confirmation | false pairs | false clusters |\n| --- | ---: | ---: |")
    for label, shape in (("fine hash", float("inf")), ("fine hash and shape (now)", settings.max_aspect_change)):
        confirmed, _ = near_pairs(nodes, nodes, dataclasses.replace(settings, max_aspect_change=shape))
        print(f"| {label} | {len(confirmed)} | {len(set(stars(confirmed).values()))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=100, help="photos of the set that get variants")
    parser.add_argument("--sizes", default="1000,4000,15000", help="collection sizes for the scaling table")
    args = parser.parse_args()
    photos = sorted(glob.glob(os.path.join(PHOTOS, "*", "*", "*.jpg")))
    if not photos:
        sys.exit(f"no photos under {PHOTOS} (../shared/datasets/hymenoptera)")
    files, group = near_duplicate_set.labelled_set(photos, args.variants)
    quality_table(files, group)
    sample_table()
    scaling_table(photos, [int(n) for n in args.sizes.split(",")])


if __name__ == "__main__":
    main()
