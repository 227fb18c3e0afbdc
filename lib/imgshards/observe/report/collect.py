"""What the dataset report shows, gathered with Spark aggregations: every collect below is bounded by the
report settings (examples, clusters, samples per class), never by the size of the dataset. Images reach
the driver only as small thumbnails made on the executors.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
from typing import Iterator, Optional

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType
from pyspark.sql.window import Window

from imgshards import __version__, quality
from imgshards.config import QUALITY_SIGNALS, PipelineConfig, join_path
from imgshards.delta import run_state, tables
from imgshards.io import storage
from imgshards.schemas import (
    DUPLICATES_TABLE,
    IMAGES_TABLE,
    LABEL_CONFLICTS_TABLE,
    PROCESSED_TABLE,
    QUARANTINE_TABLE,
    TABLES,
)

log = logging.getLogger(__name__)

UNLABELED = "(unlabeled)"
CLUSTER_MEMBERS = 6  # thumbnails per near-duplicate cluster
AUGMENTED_PARENTS = 4  # images shown with their augmented copies
AUGMENTED_COPIES = 4  # copies shown per parent


def _table(spark: SparkSession, config: PipelineConfig, name: str) -> Optional[DataFrame]:
    """The latest version of a table, None when there is none."""
    table = config.table(name)
    return tables.table_frame(spark, table) if tables.is_delta_table(spark, table) else None


def thumbnail_column(image: F.Column, image_format: F.Column, size: int) -> F.Column:
    """A JPEG thumbnail (longer side ``size``) of encoded image bytes or of an ``.npy`` array, made on the
    executor; null for bytes that do not decode."""

    @F.pandas_udf(BinaryType())
    def thumbnails(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
        import numpy as np
        from PIL import Image, ImageOps

        from imgshards.imaging import to_rgb

        def one(data, fmt):
            try:
                if fmt == "raw":
                    img = Image.fromarray(np.load(io.BytesIO(data), allow_pickle=False))
                else:
                    img = Image.open(io.BytesIO(data))
                    img.draft("RGB", (size, size))
                    img = ImageOps.exif_transpose(img)
                img = to_rgb(img)  # 16-bit, palette, alpha and CMYK as preprocess converts them
                img.thumbnail((size, size))
                out = io.BytesIO()
                img.save(out, "JPEG", quality=80)
                return out.getvalue()
            except Exception:
                return None

        for data, formats in batches:
            yield pd.Series([one(d, f) for d, f in zip(data, formats)], dtype=object)

    return thumbnails(image, image_format)


def _latest_summaries(config: PipelineConfig) -> dict:
    """The newest run summary of each job under ``<workdir>/runs`` (local workdirs only)."""
    found: dict = {}
    for path in sorted(glob.glob(os.path.join(config.workdir, "runs", "*.json"))):
        try:
            with open(path) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            continue
        found[summary.get("job", "?")] = summary  # file names start with the run id's timestamp: last wins
    return found


def fates(spark: SparkSession, config: PipelineConfig) -> dict:
    """Every file's fate over the tables: images (live, marked deleted), duplicates, quarantine rows per
    stage and reason with examples (the skipped files: :func:`skipped`)."""
    k = config.report.examples_per_reason
    out = {"images": 0, "deleted": 0, "duplicates": 0, "duplicate_examples": [], "quarantine": [], "skipped": None}
    images = _table(spark, config, IMAGES_TABLE)
    if images is not None:
        live, deleted = images.agg(F.count(F.when(F.col("deleted_at").isNull(), 1)),
                                   F.count(F.when(F.col("deleted_at").isNotNull(), 1))).head()
        out.update(images=live, deleted=deleted)
    duplicates = _table(spark, config, DUPLICATES_TABLE)
    if duplicates is not None:
        out["duplicates"] = duplicates.count()
        examples = duplicates.select("path", "duplicate_of").orderBy("path").limit(k).collect()
        out["duplicate_examples"] = [r.asDict() for r in examples]
    quarantine = _table(spark, config, QUARANTINE_TABLE)
    if quarantine is not None:
        # One shuffle: each (stage, reason) counted and its first paths picked over the same partitioning
        # (the first row of every reason is kept, for its count, even when no examples are wanted).
        per_reason = Window.partitionBy("stage", "reason")
        picked = (quarantine.select("stage", "reason", "path", "detail",
                                    F.count(F.lit(1)).over(per_reason).alias("count"),
                                    F.row_number().over(per_reason.orderBy("path")).alias("rank"))
                  .filter(F.col("rank") <= max(k, 1)).collect())
        reasons: dict = {}
        for r in sorted(picked, key=lambda r: r["rank"]):
            entry = reasons.setdefault((r["stage"], r["reason"]), {"stage": r["stage"], "reason": r["reason"],
                                                                   "count": r["count"], "examples": []})
            if r["rank"] <= k:
                entry["examples"].append({"path": r["path"], "detail": r["detail"]})
        out["quarantine"] = sorted(reasons.values(), key=lambda e: (-e["count"], e["stage"], e["reason"]))
    return out


def skipped(runs: dict) -> Optional[dict]:
    """The files the latest ingest run skipped (hidden, not images): no table keeps them."""
    for job in ("pipeline", "ingest"):
        ingest = (runs.get(job) or {}).get("ingest")
        if ingest:
            return {"run_id": runs[job]["run_id"], "hidden": ingest["skipped_hidden"],
                    "non_image": ingest["skipped_non_image"]}
    return None


def _bins() -> list:
    """The profile's histograms: (kind, integer bin expression), half-octave and octave bins so that any
    range fits a handful of bars."""
    return [
        ("width", F.floor(F.log2(F.greatest(F.col("width"), F.lit(1))) * 2)),
        ("height", F.floor(F.log2(F.greatest(F.col("height"), F.lit(1))) * 2)),
        ("aspect", F.round(F.least(F.greatest(F.col("width") / F.col("height"), F.lit(0.25)), F.lit(4.0)) * 4)),
        ("size_bytes", F.floor(F.log2(F.greatest(F.col("size_bytes"), F.lit(1))))),
    ]


def profile(meta: DataFrame) -> dict:
    """Class balance per split, formats, and histograms of sides, aspect ratios and file sizes, from one
    aggregation: each row counts once in every tally, as (kind, name, split, bin)."""
    nothing = F.lit(None)

    def tally(kind: str, name: F.Column = nothing, split: F.Column = nothing, value: F.Column = nothing) -> F.Column:
        return F.struct(F.lit(kind).alias("kind"), name.cast("string").alias("name"), split.cast("string").alias("split"),
                        value.cast("long").alias("bin"))

    bins = _bins()
    tallies = [tally("balance", F.coalesce(F.col("label"), F.lit(UNLABELED)), F.col("split")),
               tally("formats", F.col("format"))] + [tally(kind, value=expression) for kind, expression in bins]
    counted = meta.select(F.explode(F.array(*tallies)).alias("t")).groupBy("t").count().collect()
    out: dict = {"balance": {}, "formats": {}, **{kind: [] for kind, _ in bins}}
    for row in sorted(counted, key=lambda r: (-r["count"], str(r["t"]["name"]))):
        kind, name, split, value = row["t"]
        if kind == "balance":
            out["balance"].setdefault(name, {})[split] = row["count"]
        elif kind == "formats":
            out["formats"][name] = row["count"]
        elif value is not None:
            out[kind].append((value, row["count"]))
    for kind, _ in bins:
        out[kind].sort()
    return out


def near_duplicates(spark: SparkSession, config: PipelineConfig, meta: DataFrame, images: DataFrame) -> dict:
    """Near-duplicate clusters, those crossing splits first, each with a few members' thumbnails (from the
    original bytes; for images ingested by reference, which have none, from their processed sample)."""
    clustered = meta.filter(F.col("near_dup_cluster").isNotNull())
    # One row per cluster with its first members, kept for the totals and the clusters shown.
    clusters = clustered.groupBy("near_dup_cluster").agg(
        F.count(F.lit(1)).alias("size"), F.countDistinct("split").alias("splits"),
        F.slice(F.sort_array(F.collect_list(F.struct("path", "split", "sha256"))), 1, CLUSTER_MEMBERS).alias("members"),
    ).persist()
    try:
        totals = clusters.agg(F.count(F.lit(1)), F.count(F.when(F.col("splits") > 1, 1))).head()
        shown = (clusters.orderBy(F.desc(F.col("splits") > 1), F.desc("size"), "near_dup_cluster")
                 .limit(config.report.near_duplicate_clusters).collect())
    finally:
        clusters.unpersist()
    thumbs = _image_thumbnails(spark, config, images, {m["sha256"] for c in shown for m in c["members"]})
    return {
        "clusters": totals[0], "crossing": totals[1],
        "shown": [{"id": c["near_dup_cluster"], "size": c["size"], "crossing": c["splits"] > 1,
                   "members": [{"path": m["path"], "split": m["split"], "thumb": thumbs.get(m["sha256"])}
                               for m in c["members"]]} for c in shown],
    }


def _image_thumbnails(spark: SparkSession, config: PipelineConfig, images: DataFrame, wanted: set) -> dict:
    """{sha256: thumbnail} of ingested images: from the original bytes, or for images ingested by reference,
    which have none, from their processed sample of the current settings."""
    if not wanted:
        return {}
    thumbs = _thumbnails(images.filter(F.col("sha256").isin(list(wanted)) & F.col("content").isNotNull()),
                         "content", F.col("format"), config)
    referenced = sorted(wanted - set(thumbs))
    processed = _table(spark, config, PROCESSED_TABLE) if referenced else None
    if processed is not None:
        current = processed.filter((F.col("config_fingerprint") == config.output_fingerprint()) & (F.col("copy") == 0)
                                   & F.col("sha256").isin(referenced)).dropDuplicates(["sha256"])
        thumbs.update(_thumbnails(current, "image", F.col("image_format"), config))
    return thumbs


def quality_findings(spark: SparkSession, config: PipelineConfig, live: DataFrame) -> Optional[dict]:
    """Per quality signal: its threshold, the live images flagged and the worst of them with thumbnails; and
    the distribution (quantiles) of each measure. None for a table without the signals."""
    if "brightness" not in live.columns:
        return None
    settings = config.ingest.quality
    flags = quality.flags(settings)
    measures = quality.measures()
    spread = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    row = live.agg(
        F.count(F.col("brightness")).alias("measured"),
        *(F.count(F.when(flag, 1)).alias(name) for name, flag in flags.items()),
        *(F.percentile_approx(column, spread).alias(f"q_{column}") for column in ("brightness", "contrast", "sharpness")),
    ).head()
    n = config.report.examples_per_reason
    signals, wanted = [], set()
    for name in QUALITY_SIGNALS:
        value, what, low = measures[name]
        worst = []
        if row[name] and n:
            order = value.asc() if low else value.desc()
            worst = [r.asDict() for r in live.filter(flags[name]).orderBy(order, "path").limit(n)
                     .select("sha256", "path", "split", value.cast("double").alias("value")).collect()]
            wanted |= {r["sha256"] for r in worst}
        signals.append({"name": name, "what": what, "past": "below" if low else "above",
                        "threshold": getattr(settings, name), "flagged": row[name], "worst": worst})
    thumbs = _image_thumbnails(spark, config, live, wanted)
    for signal in signals:
        for example in signal["worst"]:
            example["thumb"] = thumbs.get(example.pop("sha256"))
    return {"measured": row["measured"], "signals": signals, "quantiles": spread,
            "distributions": {column: list(row[f"q_{column}"] or []) for column in ("brightness", "contrast", "sharpness")}}


def label_conflict_findings(spark: SparkSession, config: PipelineConfig, live: DataFrame) -> Optional[dict]:
    """Label conflicts per kind, and the first ones with thumbnails of both sides."""
    table = _table(spark, config, LABEL_CONFLICTS_TABLE)
    if table is None:
        return None
    kinds = {r["kind"]: r["count"] for r in table.groupBy("kind").count().collect()}
    shown = [r.asDict() for r in table.orderBy("kind", "path").limit(config.report.near_duplicate_clusters)
             .select("path", "label", "kind", "other_path", "other_label", "sha256").collect()]
    others = {r["path"]: r["sha256"] for r in live.filter(F.col("path").isin([c["other_path"] for c in shown]))
              .select("path", "sha256").collect()} if shown else {}
    thumbs = _image_thumbnails(spark, config, live, {c["sha256"] for c in shown} | set(others.values()))
    for c in shown:
        c["thumb"] = thumbs.get(c["sha256"])
        c["other_thumb"] = thumbs.get(others.get(c["other_path"]))
    return {"total": sum(kinds.values()), "kinds": kinds, "shown": shown}


def _thumbnails(rows: Optional[DataFrame], column: str, fmt: F.Column, config: PipelineConfig,
                key: tuple = ("sha256",)) -> dict:
    """{key: thumbnail} for ``rows`` (at most a few dozen: the callers pick them)."""
    if rows is None:
        return {}
    made = rows.select(*key, thumbnail_column(F.col(column), fmt, config.report.thumbnail_size).alias("t")).collect()
    return {(r[0] if len(key) == 1 else tuple(r[i] for i in range(len(key)))): r["t"] for r in made}


def samples(spark: SparkSession, config: PipelineConfig, meta: DataFrame) -> dict:
    """A grid of processed samples per class (the largest classes first) and augmented copies beside their
    parent, from the processed rows of the current settings."""
    processed = _table(spark, config, PROCESSED_TABLE)
    if processed is None:
        return {"grid": [], "augmented": []}
    report = config.report
    current = (processed.filter((F.col("config_fingerprint") == config.output_fingerprint()) & (F.col("copy") == 0))
               .drop("label", "split", "path")
               .join(meta.select("sha256", "path", "split", F.coalesce(F.col("label"), F.lit(UNLABELED)).alias("class")),
                     "sha256"))
    classes = [r["class"] for r in current.groupBy("class").count().orderBy(F.desc("count"), "class")
               .limit(report.max_classes).collect()]
    rank = F.row_number().over(Window.partitionBy("class").orderBy("sha256"))
    picked = (current.filter(F.col("class").isin(classes)).withColumn("rank", rank)
              .filter(F.col("rank") <= report.samples_per_class))
    made = picked.select("class", "split", "path", thumbnail_column(F.col("image"), F.col("image_format"),
                                                                     report.thumbnail_size).alias("t")).collect()
    grid = [{"class": c, "samples": [{"path": r["path"], "split": r["split"], "thumb": r["t"]}
                                     for r in sorted(made, key=lambda r: r["path"]) if r["class"] == c]}
            for c in classes]

    augmented = []
    if config.preprocess.augment.enabled:
        rows = processed.filter(F.col("config_fingerprint").isin(config.sample_fingerprints()))
        parents = [r[0] for r in rows.filter(F.col("copy") > 0).select("sha256").distinct().orderBy("sha256")
                   .limit(AUGMENTED_PARENTS).collect()]
        if parents:
            family = rows.filter(F.col("sha256").isin(parents) & (F.col("copy") <= AUGMENTED_COPIES))
            thumbs = _thumbnails(family, "image", F.col("image_format"), config, key=("sha256", "copy"))
            for sha in parents:
                copies = sorted((c, t) for (s, c), t in thumbs.items() if s == sha)
                augmented.append({"sha256": sha, "copies": [{"copy": c, "thumb": t} for c, t in copies]})
    return {"grid": grid, "augmented": augmented}


def history(spark: SparkSession, config: PipelineConfig) -> dict:
    """Each table's recent history with the run ids and jobs that committed."""
    return {name: tables.history(spark, config.table(name), limit=10) for name in TABLES}


def from_tables(spark: SparkSession, config: PipelineConfig) -> dict:
    """The report's sections that come from the tables (fates, profile, near-duplicates, samples, history).

    Kept in the warehouse's state with the tables' versions (see :mod:`imgshards.delta.run_state`): a report over
    the same versions and settings reuses it without Spark."""
    if not run_state.usable(config):
        return _from_tables(spark, config)
    versions = run_state.table_versions(spark, config, TABLES)
    settings = [__version__, config.fingerprint()]
    state = run_state.load(spark, config, "report")
    if state and state.get("settings") == settings and state.get("versions") == versions:
        return state["data"]
    found = _from_tables(spark, config)
    if run_state.table_versions(spark, config, TABLES) == versions:  # no commit while it was read
        run_state.save(spark, config, "report", {"settings": settings, "versions": versions, "data": found})
    return found


def gather(spark: SparkSession, config: PipelineConfig, runs: Optional[dict] = None,
           found: Optional[dict] = None) -> dict:
    """Everything the report shows. ``runs``: summaries of the runs to describe (job -> summary); the
    newest summaries under ``<workdir>/runs`` fill in the jobs not given. ``found``: what
    :func:`from_tables` returned, when the caller gathered it already (the pipeline does, during export)."""
    runs = {**_latest_summaries(config), **(runs or {})}
    found = dict(found if found is not None else from_tables(spark, config))
    text = storage.read_text(spark, join_path(config.output, "manifest.json"))
    found["fates"] = {**found["fates"], "skipped": skipped(runs)}
    return {"runs": runs, "config": config.to_dict(), **found,
            "lineage": {"manifest": json.loads(text) if text else None, "history": found.pop("history")}}


def _from_tables(spark: SparkSession, config: PipelineConfig) -> dict:
    """The report's sections that come from the tables: fates, profile, near-duplicates, samples, history."""
    images = _table(spark, config, IMAGES_TABLE)
    data: dict = {}
    meta = None
    if images is not None:
        live = images.filter(F.col("deleted_at").isNull())
        meta = live.select("sha256", "path", "label", "split", "format", "width", "height", "size_bytes",
                           "near_dup_cluster").persist()
    try:
        data["fates"] = fates(spark, config)
        if meta is not None:
            data["profile"] = profile(meta)
            data["near_duplicates"] = near_duplicates(spark, config, meta, live)
            data["quality"] = quality_findings(spark, config, live)
            data["label_conflicts"] = label_conflict_findings(spark, config, live)
            data["samples"] = samples(spark, config, meta)
        else:
            data.update(profile=None, near_duplicates=None, quality=None, label_conflicts=None,
                        samples={"grid": [], "augmented": []})
    finally:
        if meta is not None:
            meta.unpersist()
    data["history"] = history(spark, config)
    return data
