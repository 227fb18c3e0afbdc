"""Near-duplicate images by perceptual hash (64-bit dHash, imgshards.imaging.perceptual_hash), kept in one
split so that a near-copy of a training image does not land in validation.

Images with the same hash are one node, so a photo copied a thousand times costs one node, not half a
million pairs. Nodes within a Hamming distance are found by a join on bit bands (no all-pairs comparison);
only those hash pairs reach the driver, as two longs each, for a union-find. Everything per image (which
cluster, which split, which clusters cross splits) is an aggregation in Spark.

Up to DRIVER_MAX_IMAGES hashed images (the table's live rows and the new ones together) the same is done
on the driver instead, after a bounded count and one collect: on a small run the distributed way is some
sixteen Spark jobs of a fraction of a second each for a few thousand rows. Both ways give the same clusters, splits and
report (tests/test_ingest.py runs every case through both)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter, defaultdict
from typing import Iterable, Iterator, Optional

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from imgshards.config import NearDuplicatesConfig
from imgshards.delta import tables
from imgshards.imaging import hamming
from imgshards.ingest.rules import EXAMPLES

log = logging.getLogger(__name__)

# At most this many hashed images (live and new) are clustered on the driver: some 400 bytes each there
# (20 MB at the bound), and the band join's comparisons grow with the square of the distinct hashes (about
# 1.5 million at 50,000 random hashes, a second here); beyond it, in Spark, over every core.
DRIVER_MAX_IMAGES = 50_000
NO_CLUSTERS = {"clusters": 0, "images": 0, "hash_pairs": 0, "crossing_splits": 0, "crossing_examples": []}


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(offset, width) of max_distance + 1 bit bands covering 64 bits: two hashes at most max_distance
    bits apart agree on at least one whole band (pigeonhole), so a join on bands finds every pair."""
    n = max_distance + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    offsets = [sum(widths[:i]) for i in range(n)]
    return list(zip(offsets, widths))


def _banded(hashes: DataFrame, max_distance: int) -> DataFrame:
    bands = [
        F.struct(F.lit(i).alias("band"),
                 F.shiftright(F.col("phash"), offset).bitwiseAND(F.lit((1 << width) - 1).cast("long")).alias("value"))
        for i, (offset, width) in enumerate(_bands(max_distance))
    ]
    return hashes.select("phash", F.explode(F.array(*bands)).alias("b")).select("phash", "b.band", "b.value")


def hash_pairs(new: DataFrame, known: DataFrame, max_distance: int) -> DataFrame:
    """Distinct hash pairs (a from ``new``, b from ``known``; a != b) at most ``max_distance`` bits apart.
    Both frames have a ``phash`` column; each hash takes part once however many images share it."""
    a = _banded(new.select("phash").distinct(), max_distance).alias("a")
    b = _banded(known.select("phash").distinct(), max_distance).alias("b")
    return (
        a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.value") == F.col("b.value"))
               & (F.col("a.phash") != F.col("b.phash")))
        .select(F.col("a.phash").alias("a"), F.col("b.phash").alias("b"))
        .filter(F.expr(f"bit_count(a ^ b) <= {int(max_distance)}"))
        .select(F.least("a", "b").alias("a"), F.greatest("a", "b").alias("b"))
        .distinct()
    )


def components(pairs) -> dict:
    """Union-find over hash pairs: {hash: the smallest hash of its component} for every hash in a pair."""
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


def _with_components(spark: SparkSession, members: DataFrame, roots: dict) -> DataFrame:
    """``members`` with ``comp``: the component of its hash (the hash itself when it is in no pair)."""
    if not roots:
        return members.withColumn("comp", F.col("phash"))
    root_map = F.broadcast(spark.createDataFrame(list(roots.items()), "phash long, root long"))
    return (members.join(root_map, "phash", "left")
            .withColumn("comp", F.coalesce(F.col("root"), F.col("phash"))).drop("root"))


def _summary(members: DataFrame, same_split: bool) -> DataFrame:
    """One row per cluster (a component with at least two images, one of them new): ``comp``, ``cluster``
    (its smallest sha256), ``target`` (the split its new images take), ``new`` (its new images), ``splits``
    (those its images sit in once the new ones have theirs) and ``crossing`` (more than one).

    A cluster that already has rows in the table keeps their (most common) split, since ingested rows never
    move; otherwise it takes the split of the new member with the smallest sha256 of its sha256. The split is
    decided by a sha256's leading bits, so the smallest of 13 members would almost always be train
    (1 - 0.2**13): clusters would all land there. A second hash is independent of those bits, so clusters split
    in the configured proportions. With ``same_split`` false, rows keep their own split and clusters that
    cross splits are only reported."""
    new = ~F.col("existing")
    members = members.join(members.filter(new).select("comp").distinct(), "comp", "left_semi")
    old_votes = (members.filter(F.col("existing")).groupBy("comp", "split").count()
                 .groupBy("comp").agg(F.min(F.struct(-F.col("count"), F.col("split"))).getField("split").alias("old_split")))
    clusters = (
        members.groupBy("comp").agg(
            F.count(F.lit(1)).alias("size"),
            F.count(F.when(new, 1)).alias("new"),
            F.min("sha256").alias("cluster"),
            F.min(F.when(new, F.struct(F.sha2(F.col("sha256"), 256), F.col("split")))).getField("split").alias("new_split"),
            F.collect_set(F.when(new, F.col("split"))).alias("new_splits"),
            F.collect_set(F.when(F.col("existing"), F.col("split"))).alias("old_splits"))
        .filter(F.col("size") >= 2)
        .join(old_votes, "comp", "left")
        .withColumn("target", F.coalesce("old_split", "new_split"))
    )
    splits = F.array_union("old_splits", F.array("target") if same_split else F.col("new_splits"))
    return clusters.select("comp", "cluster", "target", "new", F.array_sort(splits).alias("splits"),
                           (F.size(splits) > 1).alias("crossing"))


def _crossing_examples(members: DataFrame, summary: DataFrame) -> list:
    """The first crossing clusters (by id) with their splits and first paths, for the run summary."""
    shown = summary.filter("crossing").orderBy("cluster").limit(EXAMPLES).select("comp", "cluster", "splits")
    first = Window.partitionBy("comp").orderBy("path")
    rows = (members.join(F.broadcast(shown), "comp")
            .withColumn("_n", F.row_number().over(first)).filter(F.col("_n") <= EXAMPLES)
            .groupBy("cluster").agg(F.first("splits").alias("splits"), F.array_sort(F.collect_list("path")).alias("paths"))
            .orderBy("cluster").collect())
    return [{"cluster": r["cluster"], "splits": list(r["splits"]), "paths": list(r["paths"])} for r in rows]


@contextlib.contextmanager
def clusters(spark: SparkSession, settings: NearDuplicatesConfig, accepted: DataFrame, live: DataFrame, *,
             driver_max: int = DRIVER_MAX_IMAGES) -> Iterator[tuple[Optional[DataFrame], dict]]:
    """Yields (sha256, near_dup_cluster, cluster_split) for the accepted rows that have near-duplicates among
    themselves or the ``live`` rows (None when none have), and the report: clusters, the new images in them,
    hash pairs, clusters crossing splits. The frame is valid inside the ``with`` block, which caches the
    cluster table it is joined to. Up to ``driver_max`` hashed images are clustered on the driver."""
    columns = ["sha256", "phash", "path", "split"]
    new = accepted.filter(F.col("phash").isNotNull()).select(*columns)
    members = (live.filter(F.col("phash").isNotNull()).select(*columns, F.lit(True).alias("existing"))
               .unionByName(new.withColumn("existing", F.lit(False))))
    rows = _bounded_collect(members, driver_max)
    if rows is not None:
        yield _on_driver(spark, settings, rows)
        return
    with _in_spark(spark, settings, new, members) as found:
        yield found


def _bounded_collect(frame: DataFrame, bound: int) -> Optional[list]:
    """The rows of ``frame`` when it has at most ``bound``, else None. Counted first, with every task
    stopping at ``bound`` + 1 rows and no column read: a take of ``bound`` + 1 rows would bring that many
    from every partition it scans to the driver."""
    if frame.limit(bound + 1).count() > bound:
        return None
    return frame.collect()


def near_pairs(new: Iterable[int], known: Iterable[int], max_distance: int) -> set:
    """:func:`hash_pairs` on the driver: {(smaller, larger)} of distinct hashes at most ``max_distance`` bits
    apart, one from ``new``, by the same bit bands (signed 64-bit values, shifted as Spark shifts them)."""
    new, known = set(new), set(known)
    pairs = set()
    for offset, width in _bands(max_distance):
        mask = (1 << width) - 1
        index = defaultdict(list)
        for h in known:
            index[(h >> offset) & mask].append(h)
        for a in new:
            for b in index.get((a >> offset) & mask, ()):
                if a != b and hamming(a, b) <= max_distance:
                    pairs.add((min(a, b), max(a, b)))
    return pairs


def _on_driver(spark: SparkSession, settings: NearDuplicatesConfig, rows: list) -> tuple[Optional[DataFrame], dict]:
    """What :func:`_in_spark` finds, from the collected members (sha256, phash, path, split, existing):
    :func:`_summary`'s rules, one cluster at a time."""
    new_hashes = (r["phash"] for r in rows if not r["existing"])
    pairs = near_pairs(new_hashes, (r["phash"] for r in rows), settings.max_distance)
    roots = components(pairs)
    by_comp = defaultdict(list)
    for r in rows:
        by_comp[roots.get(r["phash"], r["phash"])].append(r)
    assigned, crossing, found = [], [], 0
    for members in by_comp.values():
        new = [r for r in members if not r["existing"]]
        if not new or len(members) < 2:
            continue
        old_votes = Counter(r["split"] for r in members if r["existing"])
        new_split = min((hashlib.sha256(r["sha256"].encode()).hexdigest(), r["split"]) for r in new)[1]
        target = min((-n, split) for split, n in old_votes.items())[1] if old_votes else new_split
        splits = set(old_votes) | ({target} if settings.same_split else {r["split"] for r in new})
        cluster = min(r["sha256"] for r in members)
        assigned += [(r["sha256"], cluster, target if settings.same_split else r["split"]) for r in new]
        found += 1
        if len(splits) > 1:
            crossing.append({"cluster": cluster, "splits": sorted(splits),
                             "paths": sorted(r["path"] for r in members)[:EXAMPLES]})
    report = {**NO_CLUSTERS, "hash_pairs": len(pairs)}
    if not found:
        return None, report
    crossing.sort(key=lambda c: c["cluster"])
    if crossing:
        log.warning("%d near-duplicate cluster(s) cross splits, e.g. %s", len(crossing), crossing[:1])
    report.update(clusters=found, images=len(assigned), crossing_splits=len(crossing),
                  crossing_examples=crossing[:EXAMPLES])
    columns = pd.DataFrame(assigned, columns=["sha256", "near_dup_cluster", "cluster_split"])
    with tables.temporary_conf(spark, "spark.sql.execution.arrow.pyspark.enabled", "true"):
        frame = spark.createDataFrame(columns, "sha256 string, near_dup_cluster string, cluster_split string")
    return (F.broadcast(frame) if len(assigned) <= tables.BROADCAST_ROWS else frame), report


@contextlib.contextmanager
def _in_spark(spark: SparkSession, settings: NearDuplicatesConfig, new: DataFrame,
              members: DataFrame) -> Iterator[tuple[Optional[DataFrame], dict]]:
    """The clusters of any number of images: hash pairs by a join on bit bands (only those collected),
    every per-image decision an aggregation."""
    # The hash pairs are all that is collected: they grow with the near-but-not-identical hashes, not with
    # the images (identical hashes, as pixel-identical copies have, are one node).
    pairs = [(r["a"], r["b"]) for r in hash_pairs(new, members, settings.max_distance).collect()]
    members = _with_components(spark, members, components(pairs))
    summary = _summary(members, settings.same_split).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        found, crossing, images = summary.agg(F.count(F.lit(1)), F.count(F.when(F.col("crossing"), 1)), F.sum("new")).head()
        if not found:
            yield None, {**NO_CLUSTERS, "hash_pairs": len(pairs)}
            return
        examples = []
        if crossing:
            examples = _crossing_examples(members, summary)
            log.warning("%d near-duplicate cluster(s) cross splits, e.g. %s", crossing, examples[:1])
        split = F.col("target") if settings.same_split else F.col("split")
        assigned = (members.filter(~F.col("existing")).join(summary, "comp")
                    .select("sha256", F.col("cluster").alias("near_dup_cluster"), split.alias("cluster_split")))
        yield assigned, {"clusters": found, "images": images, "hash_pairs": len(pairs),
                         "crossing_splits": crossing, "crossing_examples": examples}
    finally:
        summary.unpersist()
