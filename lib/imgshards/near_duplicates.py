"""Near-duplicate images by perceptual hash (64-bit dHash, imgshards.imaging.perceptual_hash): pairs within
a Hamming distance found by a join on bit bands (no all-pairs comparison), then clusters by union-find, kept
in one split so that a near-copy of a training image does not land in validation."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Optional, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from imgshards.config import NearDuplicatesConfig
from imgshards.rules import EXAMPLES

log = logging.getLogger(__name__)


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(offset, width) of max_distance + 1 bit bands covering 64 bits: two hashes at most max_distance
    bits apart agree on at least one whole band (pigeonhole), so a join on bands finds every pair."""
    n = max_distance + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    offsets = [sum(widths[:i]) for i in range(n)]
    return list(zip(offsets, widths))


def _banded(df: DataFrame, max_distance: int) -> DataFrame:
    bands = [
        F.struct(F.lit(i).alias("band"), F.shiftright(F.col("phash"), offset).bitwiseAND(F.lit((1 << width) - 1).cast("long")).alias("value"))
        for i, (offset, width) in enumerate(_bands(max_distance))
    ]
    return df.select("*", F.explode(F.array(*bands)).alias("b")).select("*", "b.band", "b.value").drop("b")


def near_duplicate_pairs(new: DataFrame, others: DataFrame, max_distance: int) -> DataFrame:
    """Pairs (a from ``new``, b from ``others``) whose perceptual hashes are at most ``max_distance`` bits apart."""
    a = _banded(new.select("sha256", "phash", "path", "split"), max_distance).alias("a")
    b = _banded(others.select("sha256", "phash", "path", "split", "existing"), max_distance).alias("b")
    return (
        a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.value") == F.col("b.value"))
               & (F.col("a.sha256") != F.col("b.sha256")))
        .select(F.col("a.sha256").alias("a"), F.col("a.path").alias("a_path"), F.col("a.split").alias("a_split"),
                F.col("b.sha256").alias("b"),
                F.col("b.path").alias("b_path"), F.col("b.split").alias("b_split"), F.col("b.existing").alias("b_existing"),
                F.expr("bit_count(a.phash ^ b.phash)").alias("distance"))
        .filter(F.col("distance") <= max_distance)
        .dropDuplicates(["a", "b"])
    )


def _representative(shas: Sequence[str]) -> str:
    """The member whose split a new cluster takes: the smallest by a hash of its sha256, not the smallest
    sha256 itself. The split is decided by a sha256's leading bits, so the smallest of 13 members is almost
    always below train's 0.8 (1 - 0.2**13): clusters would all land in train. A second hash is independent
    of those bits, so clusters split in the configured proportions."""
    return min(shas, key=lambda s: hashlib.sha256(s.encode()).digest())


def assign_clusters(pairs: Sequence, new_splits: dict, same_split: bool) -> tuple[dict, dict]:
    """Union-find over near-duplicate pairs. Returns ({sha256 of a new row: (cluster id, split)}, report).

    A cluster that already has rows in the table keeps their (most common) split, since ingested rows
    never move; otherwise it takes the split of one member chosen by :func:`_representative`. With
    ``same_split`` false, rows keep their own split and crossing clusters are only reported.
    """
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    existing_split, paths = {}, {}
    for p in pairs:
        parent[find(p["a"])] = find(p["b"])
        paths[p["a"]], paths[p["b"]] = p["a_path"], p["b_path"]
        if p["b_existing"]:
            existing_split[p["b"]] = p["b_split"]
    members: dict = {}
    for sha in list(parent):
        members.setdefault(find(sha), []).append(sha)
    assignment, crossing = {}, []
    for shas in members.values():
        shas.sort()
        cluster = shas[0]
        old = Counter(existing_split[s] for s in shas if s in existing_split)
        target = (sorted(old.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if old
                  else new_splits[_representative([s for s in shas if s in new_splits])])
        splits = set(old)
        for sha in shas:
            if sha in new_splits:
                split = target if same_split else new_splits[sha]
                assignment[sha] = (cluster, split)
                splits.add(split)
        if len(splits) > 1:
            crossing.append({"cluster": cluster, "splits": sorted(splits), "paths": sorted(paths[s] for s in shas)[:EXAMPLES]})
    report = {"clusters": len(members), "crossing_splits": len(crossing), "crossing_examples": crossing[:EXAMPLES]}
    return assignment, report


def clusters(spark: SparkSession, settings: NearDuplicatesConfig, accepted: DataFrame,
             live: DataFrame) -> tuple[Optional[DataFrame], dict]:
    """(sha256, near_dup_cluster, cluster_split) for the accepted rows that have near-duplicates among
    themselves or the ``live`` rows (None when none have), and the report: pairs, clusters, crossing splits."""
    nd = settings
    new = accepted.filter(F.col("phash").isNotNull())
    others = (
        live.filter(F.col("phash").isNotNull()).select("sha256", "phash", "path", "split", F.lit(True).alias("existing"))
        .unionByName(new.select("sha256", "phash", "path", "split", F.lit(False).alias("existing")))
    )
    pairs = near_duplicate_pairs(new, others, nd.max_distance).collect()
    if not pairs:
        return None, {"pairs": 0, "clusters": 0, "crossing_splits": 0, "crossing_examples": []}
    new_splits = {p["a"]: p["a_split"] for p in pairs}
    new_splits.update((p["b"], p["b_split"]) for p in pairs if not p["b_existing"])
    assignment, report = assign_clusters(pairs, new_splits, nd.same_split)
    if report["crossing_splits"]:
        log.warning("%d near-duplicate cluster(s) cross splits, e.g. %s", report["crossing_splits"], report["crossing_examples"][:1])
    assigned = spark.createDataFrame([(sha, cluster, split) for sha, (cluster, split) in assignment.items()],
                                     "sha256 string, near_dup_cluster string, cluster_split string")
    return assigned, {"pairs": len(pairs), **report}
