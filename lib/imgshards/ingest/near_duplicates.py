"""Near-duplicate images, kept in one split so that a near-copy of a training image does not land in validation.

Two hashes per image (imgshards.imaging.fingerprint): images whose 64-bit dHashes are at most ``max_distance``
bits apart are candidates, found by a join on bit bands (no all-pairs comparison); a candidate pair counts only
when their 256-bit DCT hashes are at most ``confirm_distance`` bits apart, which tells a re-encoded, resized,
slightly cropped or brightened copy from a different photo that happens to share a coarse hash, and their shapes
(longer over shorter side) at most ``max_aspect_change`` apart, which a copy keeps and a different image of a
similar grey layout seldom shares. Images with the same two hashes and shape are one node, so a photo copied a
thousand times costs one node, not half a million pairs.

Confirmed pairs never chain: a cluster is a centre and the nodes confirmed close to it (star clustering,
the node with the most confirmed neighbours first), so every member is a near-duplicate of its centre and two
unrelated photos cannot be joined through a chain of intermediate ones. Pairs are looked for between each new
node and every node; two rows already in the table are not paired again. Only the confirmed pairs reach the
driver (two node keys each); everything per image (which cluster, which split, which clusters cross splits)
is an aggregation in Spark.

Up to DRIVER_MAX_IMAGES hashed images (the table's live rows and the new ones together) the same is done
on the driver instead, after a bounded count and one collect: on a small run the distributed way is some
sixteen Spark jobs of a fraction of a second each for a few thousand rows. Both ways give the same clusters,
splits and report (tests/test_ingest.py runs every case through both)."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections import Counter, defaultdict
from typing import Iterable, Iterator, Optional

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from imgshards.config import NearDuplicatesConfig
from imgshards.delta import tables
from imgshards.imaging import fine_distance, hamming
from imgshards.ingest.rules import EXAMPLES

log = logging.getLogger(__name__)

# At most this many hashed images (live and new) are clustered on the driver: some 500 bytes each there
# (25 MB at the bound); beyond it, in Spark, over every core.
DRIVER_MAX_IMAGES = 50_000
NO_CLUSTERS = {"clusters": 0, "images": 0, "candidate_pairs": 0, "hash_pairs": 0, "crossing_splits": 0,
               "crossing_examples": []}


def aspect_key(width: int, height: int) -> int:
    """The ratio of the longer to the shorter side in thousandths (rounded half up), as :func:`_node` keys it:
    the same for an image and its copy turned by 90 degrees."""
    return math.floor(max(width, height) * 1000.0 / min(width, height) + 0.5)


def node_key(phash: int, fine: Iterable[int], aspect: int) -> str:
    """One string per pair of hashes and shape (:func:`aspect_key`), the same as :func:`_node` makes in Spark."""
    return ":".join(str(v) for v in (phash, *fine, aspect))


def _parse_node(key: str) -> tuple[int, tuple[int, ...], int]:
    phash, *fine, aspect = (int(v) for v in key.split(":"))
    return phash, tuple(fine), aspect


def _node() -> F.Column:
    """:func:`node_key` in Spark, from the columns phash, phash_fine, width and height."""
    aspect = F.floor(F.greatest("width", "height").cast("double") * 1000.0 / F.least("width", "height").cast("double")
                     + 0.5)
    return F.concat_ws(":", F.col("phash").cast("string"), F.array_join(F.col("phash_fine").cast("array<string>"), ":"),
                       aspect.cast("string"))


def _shapes_close(a: int, b: int, settings: NearDuplicatesConfig) -> bool:
    """Two :func:`aspect_key` values at most ``max_aspect_change`` apart (as a fraction of the smaller)."""
    return max(a, b) <= min(a, b) * (1 + settings.max_aspect_change)


def _bands(max_distance: int) -> tuple[list[tuple[int, int]], int]:
    """(offset, width) of the bit bands covering 64 bits, and how many bits a band may differ in: two hashes
    at most max_distance bits apart differ in at most that many bits of one band (pigeonhole). One flipped bit
    per band lets the bands be about twice as wide as exact bands would be, so that a random pair shares a
    probed band value far less often (at distance 7: 4 x 17 probes of 16 bits against 8 bands of 8 bits, about
    30 times less), and fewer pairs are examined per image."""
    errors = 1 if max_distance >= 1 else 0
    n = -(-(max_distance + 1) // (errors + 1))
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    offsets = [sum(widths[:i]) for i in range(n)]
    return list(zip(offsets, widths)), errors


def _band_values(phash: int, max_distance: int, probe: bool) -> list[tuple[int, int]]:
    """(band, value) of a hash (shifted as Spark shifts signed longs); with ``probe``, each value with every
    one of its bits flipped too, as many as a band may differ in."""
    bands, errors = _bands(max_distance)
    out = []
    for i, (offset, width) in enumerate(bands):
        value = (phash >> offset) & ((1 << width) - 1)
        out.append((i, value))
        if probe and errors:
            out += [(i, value ^ (1 << j)) for j in range(width)]
    return out


def _tagged(values: F.Column, band: int) -> F.Column:
    # A one-argument lambda: Spark's transform passes the element's index as a second argument.
    return F.transform(values, lambda v: F.struct(F.lit(band).alias("band"), v.alias("value")))


def _banded(nodes: DataFrame, max_distance: int, probe: bool) -> DataFrame:
    """:func:`_band_values` in Spark: the rows of ``nodes`` exploded to (band, value)."""
    bands, errors = _bands(max_distance)
    parts = []
    for i, (offset, width) in enumerate(bands):
        value = F.shiftright(F.col("phash"), offset).bitwiseAND(F.lit((1 << width) - 1).cast("long"))
        flips = range(width) if probe and errors else ()
        values = F.array(value, *(value.bitwiseXOR(F.lit(1 << j if j < 63 else -(1 << 63)).cast("long")) for j in flips))
        parts.append(_tagged(values, i))
    return nodes.select("*", F.explode(F.flatten(F.array(*parts))).alias("b")).select("*", "b.band", "b.value").drop("b")


def _fine_bits(a: str, b: str) -> F.Column:
    return F.aggregate(F.zip_with(F.col(a), F.col(b), lambda x, y: F.bit_count(x.bitwiseXOR(y))), F.lit(0),
                       lambda total, bits: total + bits)


def node_pairs(new: DataFrame, known: DataFrame, settings: NearDuplicatesConfig) -> DataFrame:
    """Distinct node pairs (a < b, node keys; one node from ``new``) whose dHashes are at most ``max_distance``
    bits apart, with ``confirmed``: their fine hashes at most ``confirm_distance`` apart and their shapes at most
    ``max_aspect_change`` (:func:`_shapes_close`). Both frames have the columns phash, phash_fine and node; each
    node takes part once however many images share it."""
    aspect = F.element_at(F.split("node", ":"), -1).cast("long").alias("aspect")
    columns = ["node", "phash", "phash_fine", aspect]
    a = _banded(new.select(*columns).distinct(), settings.max_distance, probe=True).alias("a")
    b = _banded(known.select(*columns).distinct(), settings.max_distance, probe=False).alias("b")
    return (
        a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.value") == F.col("b.value"))
               & (F.col("a.node") != F.col("b.node")))
        .filter(F.bit_count(F.col("a.phash").bitwiseXOR(F.col("b.phash"))) <= settings.max_distance)
        .select(F.least("a.node", "b.node").alias("a"), F.greatest("a.node", "b.node").alias("b"),
                ((_fine_bits("a.phash_fine", "b.phash_fine") <= settings.confirm_distance)
                 & (F.greatest("a.aspect", "b.aspect") <= F.least("a.aspect", "b.aspect") * (1 + settings.max_aspect_change))
                 ).alias("confirmed"))
        .distinct()
    )


def near_pairs(new: Iterable[str], known: Iterable[str], settings: NearDuplicatesConfig,
               examined: Optional[Counter] = None) -> tuple[set, set]:
    """:func:`node_pairs` on the driver, over node keys: ({(a, b)} confirmed, {(a, b)} candidates not confirmed),
    a < b. ``examined`` counts the pairs whose dHashes were compared (the cost of the candidate stage)."""
    new, known = set(new), set(known)
    parsed = {key: _parse_node(key) for key in new | known}
    index = defaultdict(list)
    for key in known:
        for band in _band_values(parsed[key][0], settings.max_distance, probe=False):
            index[band].append(key)
    confirmed, rejected = set(), set()
    for a in new:
        (phash_a, fine_a, aspect_a), seen = parsed[a], set()
        for band in _band_values(phash_a, settings.max_distance, probe=True):
            for b in index.get(band, ()):
                if b == a or b in seen:
                    continue
                seen.add(b)
                phash_b, fine_b, aspect_b = parsed[b]
                if hamming(phash_a, phash_b) <= settings.max_distance:
                    pair = (min(a, b), max(a, b))
                    close = (fine_distance(fine_a, fine_b) <= settings.confirm_distance
                             and _shapes_close(aspect_a, aspect_b, settings))
                    (confirmed if close else rejected).add(pair)
        if examined is not None:
            examined["pairs"] += len(seen)
    return confirmed, rejected


def stars(pairs: Iterable[tuple[str, str]]) -> dict:
    """{node: the centre of its cluster} for every node in a confirmed pair: the node with the most confirmed
    neighbours (then the smallest) is a centre and takes its neighbours not yet taken, and so on. Every member
    is confirmed close to its centre: no chains."""
    neighbours: dict = defaultdict(set)
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    centre: dict = {}
    for node in sorted(neighbours, key=lambda n: (-len(neighbours[n]), n)):
        if node not in centre:
            centre[node] = node
            for other in sorted(neighbours[node]):
                centre.setdefault(other, node)
    return centre


def _with_components(spark: SparkSession, members: DataFrame, centres: dict) -> DataFrame:
    """``members`` with ``comp``: the centre of its node's cluster (the node itself when it is in none)."""
    if not centres:
        return members.withColumn("comp", F.col("node"))
    centre_map = F.broadcast(spark.createDataFrame(list(centres.items()), "node string, centre string"))
    return (members.join(centre_map, "node", "left")
            .withColumn("comp", F.coalesce(F.col("centre"), F.col("node"))).drop("centre"))


def _summary(members: DataFrame, same_split: bool) -> DataFrame:
    """One row per cluster (a component with at least two images, one of them new): ``comp``, ``cluster``
    (its smallest sha256), ``target`` (the split its new images take), ``new`` (its new images), ``splits``
    (those its images sit in once the new ones have theirs), ``crossing`` (more than one), ``cluster_label`` and
    ``label_example`` (see :func:`clusters`).

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
    votes = (members.filter(F.col("label").isNotNull()).groupBy("comp", "label")
             .agg(F.count(F.lit(1)).alias("n"), F.min("path").alias("example"))
             .groupBy("comp").agg(F.min(F.struct(-F.col("n"), F.col("label"), F.col("example"))).alias("m"))
             .select("comp", F.col("m.label").alias("cluster_label"), F.col("m.example").alias("label_example")))
    splits = F.array_union("old_splits", F.array("target") if same_split else F.col("new_splits"))
    return clusters.join(votes, "comp", "left").select(
        "comp", "cluster", "target", "new", F.array_sort(splits).alias("splits"), (F.size(splits) > 1).alias("crossing"),
        "cluster_label", "label_example")


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
    """Yields (sha256, near_dup_cluster, cluster_split, cluster_label, label_example) for the accepted rows that
    have near-duplicates among themselves or the ``live`` rows (None when none have), and the report: clusters,
    the new images in them, hash pairs, clusters crossing splits. ``cluster_label`` is the label most of the
    cluster's images have (table rows included; the smallest label of a tie; null when none has a label) and
    ``label_example`` the first path with it: a new image under another label is a label conflict. The frame
    is valid inside the ``with`` block, which caches the cluster table it is joined to. Up to ``driver_max``
    hashed images are clustered on the driver."""
    columns = ["sha256", "phash", "phash_fine", "width", "height", "path", "split", "label"]
    # Rows of an older table lack phash_fine.
    hashed = F.col("phash").isNotNull() & F.col("phash_fine").isNotNull() & (F.least("width", "height") > 0)
    new = accepted.filter(hashed).select(*columns).withColumn("node", _node())
    members = (live.filter(hashed).select(*columns).withColumn("node", _node()).withColumn("existing", F.lit(True))
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


def _on_driver(spark: SparkSession, settings: NearDuplicatesConfig, rows: list) -> tuple[Optional[DataFrame], dict]:
    """What :func:`_in_spark` finds, from the collected members (sha256, node, path, split, existing):
    :func:`_summary`'s rules, one cluster at a time."""
    confirmed, rejected = near_pairs((r["node"] for r in rows if not r["existing"]), (r["node"] for r in rows), settings)
    centres = stars(confirmed)
    by_comp = defaultdict(list)
    for r in rows:
        by_comp[centres.get(r["node"], r["node"])].append(r)
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
        votes = Counter(r["label"] for r in members if r["label"] is not None)
        label = min(votes, key=lambda v: (-votes[v], v)) if votes else None
        example = min((r["path"] for r in members if r["label"] == label), default=None) if label is not None else None
        assigned += [(r["sha256"], cluster, target if settings.same_split else r["split"], label, example) for r in new]
        found += 1
        if len(splits) > 1:
            crossing.append({"cluster": cluster, "splits": sorted(splits),
                             "paths": sorted(r["path"] for r in members)[:EXAMPLES]})
    report = {**NO_CLUSTERS, "candidate_pairs": len(confirmed) + len(rejected), "hash_pairs": len(confirmed)}
    if not found:
        return None, report
    crossing.sort(key=lambda c: c["cluster"])
    if crossing:
        log.warning("%d near-duplicate cluster(s) cross splits, e.g. %s", len(crossing), crossing[:1])
    report.update(clusters=found, images=len(assigned), crossing_splits=len(crossing),
                  crossing_examples=crossing[:EXAMPLES])
    columns = pd.DataFrame(assigned, columns=["sha256", "near_dup_cluster", "cluster_split", "cluster_label", "label_example"])
    with tables.temporary_conf(spark, "spark.sql.execution.arrow.pyspark.enabled", "true"):
        frame = spark.createDataFrame(columns, "sha256 string, near_dup_cluster string, cluster_split string, "
                                               "cluster_label string, label_example string")
    return (F.broadcast(frame) if len(assigned) <= tables.BROADCAST_ROWS else frame), report


@contextlib.contextmanager
def _in_spark(spark: SparkSession, settings: NearDuplicatesConfig, new: DataFrame,
              members: DataFrame) -> Iterator[tuple[Optional[DataFrame], dict]]:
    """The clusters of any number of images: node pairs by a join on bit bands (only the confirmed ones
    collected), every per-image decision an aggregation."""
    # The confirmed pairs are all that is collected: they grow with the near-but-not-identical images, not
    # with all images (identical hashes, as pixel-identical copies have, are one node).
    pairs = node_pairs(new, members, settings).groupBy("confirmed").agg(
        F.count(F.lit(1)).alias("n"), F.collect_list(F.when(F.col("confirmed"), F.array("a", "b"))).alias("pairs"))
    candidates, confirmed = 0, set()
    for r in pairs.collect():
        candidates += r["n"]
        confirmed |= {(a, b) for a, b in r["pairs"]}
    members = _with_components(spark, members, stars(confirmed))
    summary = _summary(members, settings.same_split).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        found, crossing, images = summary.agg(F.count(F.lit(1)), F.count(F.when(F.col("crossing"), 1)), F.sum("new")).head()
        if not found:
            yield None, {**NO_CLUSTERS, "candidate_pairs": candidates, "hash_pairs": len(confirmed)}
            return
        examples = []
        if crossing:
            examples = _crossing_examples(members, summary)
            log.warning("%d near-duplicate cluster(s) cross splits, e.g. %s", crossing, examples[:1])
        split = F.col("target") if settings.same_split else F.col("split")
        assigned = (members.filter(~F.col("existing")).join(summary, "comp")
                    .select("sha256", F.col("cluster").alias("near_dup_cluster"), split.alias("cluster_split"),
                            "cluster_label", "label_example"))
        yield assigned, {"clusters": found, "images": images, "candidate_pairs": candidates, "hash_pairs": len(confirmed),
                         "crossing_splits": crossing, "crossing_examples": examples}
    finally:
        summary.unpersist()
