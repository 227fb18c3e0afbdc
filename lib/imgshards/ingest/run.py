"""Ingest: image files under an input path -> Delta tables ``images``, ``quarantine`` and ``duplicates``.

Every file seen ends up in exactly one bucket of :class:`~imgshards.ingest.counts.IngestCounts`; the run
fails if they do not add up. Only headers are read for format and size; the optional perceptual hash decodes
JPEGs at 1/8 scale. Batch (:func:`run_ingest`) and streaming (:func:`run_ingest_stream`) apply the same
per-batch logic (:func:`~imgshards.ingest.batch.ingest_batch`): one pass over the bytes
(:mod:`~imgshards.ingest.read`), one aggregation for the buckets, then MERGEs keyed on path of only what
changes (:mod:`~imgshards.ingest.write`), so re-runs and replays add nothing twice.

The package's modules, in the order a batch meets them: :mod:`.rules` (the pure per-file rules: hidden, not an
image, label and group from the path, split), :mod:`.labels` (a labels file), :mod:`.read` (the listing and the
probe pass), :mod:`.batch`, :mod:`.write` (buckets and MERGEs), :mod:`.near_duplicates` (clusters kept in one
split), :mod:`.state` (what lets a re-run with nothing new skip reading), :mod:`.counts`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Callable, Optional
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession

from imgshards.config import PipelineConfig, join_path
from imgshards.ingest import state as ingest_state
from imgshards.ingest.batch import ingest_batch
from imgshards.ingest.counts import IngestCounts
from imgshards.ingest.forget import purge_missing
from imgshards.ingest.labels import labels_report, read_labels_file
from imgshards.ingest.read import listed_files, read_files
from imgshards.ingest.rules import has_extension, is_hidden
from imgshards.ingest.write import mark_deleted
from imgshards.io import storage
from imgshards.observe import progress
from imgshards.runtime import workers
from imgshards.session import is_connect

log = logging.getLogger(__name__)


def run_ingest(spark: SparkSession, config: PipelineConfig, input_root: str, run_id: str) -> IngestCounts:
    """Ingest every image under ``input_root`` (batch); returns the counts (already checked to add up)."""
    ingest = config.ingest
    listing = list(storage.list_files(spark, input_root, ingest.follow_links))
    skipped_hidden = skipped_non_image = 0
    rejected, candidates = [], {}
    for f in listing:
        if is_hidden(f.relative):
            skipped_hidden += 1
        elif f.reason is not None:  # decided by the listing (links, names, listing errors)
            rejected.append((f.path, f.size_bytes, f.reason, f.detail))
        elif not has_extension(f.relative, ingest.extensions):
            skipped_non_image += 1
        elif f.size_bytes == 0:
            # Spark's file scan skips empty files, so they are accounted for from the listing.
            rejected.append((f.path, 0, "zero_byte", "0 bytes"))
        else:
            candidates[f.path] = f.size_bytes
    log.info("listed %d files under %s: %d image candidates", len(listing), input_root, len(candidates))
    base = storage.qualify(spark, input_root).rstrip("/")
    digest = before = None
    if ingest_state.in_use(config):
        digest = ingest_state.listing_digest(spark, config, base, listing)
        unchanged = ingest_state.unchanged_counts(spark, config, base, digest)
        if unchanged is not None:
            log.info("nothing changed under %s since the last ingest (listing, settings, tables): no file read", base)
            return unchanged
        before = ingest_state.table_versions(spark, config)
    workers.start_once(spark)  # while the driver reads the labels and opens the tables
    labels = read_labels_file(spark, ingest.labels).persist() if ingest.labels.source == "file" else None
    # Local files: the pass takes the listing as it is (the workers read the files); elsewhere Spark's reader.
    files = listed_files(spark, candidates) if urlparse(base).scheme == "file" else read_files(spark, input_root, config)
    # Rows of vanished files are marked (or purged) first: a copy of an original that is gone is then classified against
    # live rows only, and takes the original's place in this run instead of staying a duplicate.
    marked = purged = 0
    if ingest.missing == "mark_deleted":
        marked = mark_deleted(spark, config, base, [f.path for f in listing], run_id)
    elif ingest.missing == "purge":
        purged = purge_missing(spark, config, base, [f.path for f in listing], run_id)
    with progress.stage("ingest", images=len(candidates)):
        counts = ingest_batch(spark, config, files, base, run_id, rejected=rejected, labels=labels, listed=candidates)
    counts.marked_deleted, counts.purged = marked, purged
    if counts.seen - len(rejected) < len(candidates):
        raise RuntimeError(f"listed {len(candidates)} image files under {input_root} but accounted for "
                           f"{counts.seen - len(rejected)}")
    counts.seen += skipped_hidden + skipped_non_image
    counts.skipped_hidden, counts.skipped_non_image = skipped_hidden, skipped_non_image
    counts.check()
    if labels is not None:
        counts.labels_report.update(labels_report(spark, config, labels, [f.relative for f in listing]))
        labels.unpersist()
    if digest is not None:
        try:
            ingest_state.record(spark, config, base, digest, before, counts, run_id)
        except Exception as e:
            log.warning("ingest state of %s not written (%s): the next run reads every file", base, e)
    return counts


def checkpoint_path(config: PipelineConfig) -> str:
    return config.ingest.stream.checkpoint or join_path(config.warehouse, "_checkpoints", "ingest")


def run_ingest_stream(spark: SparkSession, config: PipelineConfig, input_root: str, run_id: str,
                      on_batch: Optional[Callable[[IngestCounts], None]] = None) -> IngestCounts:
    """Structured Streaming over ``input_root`` with a checkpoint: each micro-batch goes through
    :func:`ingest_batch` (the same MERGE), so after a restart every file is in the table exactly once.
    ``on_batch(totals)`` is called after every micro-batch with the running totals (metrics).

    With ``ingest.stream.trigger: available_now`` it drains what is there and returns; with an interval
    it runs until stopped. Zero-byte files are invisible to Spark's streaming file source (see docs/ingest.md).

    On a Spark Connect session the micro-batch function runs in a Python process beside the server, not
    here: it writes each batch's counts to ``<checkpoint>/counts/<run id>/<batch>.json``, which this side
    reads as they come (:func:`_follow_counts`).
    """
    storage.require_dir(spark, input_root)
    workers.start_once(spark)
    ingest = config.ingest
    base = storage.qualify(spark, input_root).rstrip("/")
    totals = IngestCounts()
    if is_connect(spark):
        counts_dir = join_path(checkpoint_path(config), "counts", run_id)

        def each_batch(batch: DataFrame, batch_id: int) -> None:
            session = batch.sparkSession  # the server's, in its Python process
            labels = read_labels_file(session, ingest.labels) if ingest.labels.source == "file" else None
            counts = ingest_batch(session, config, batch, base, f"{run_id}-b{batch_id}", labels=labels)
            storage.write_text(session, join_path(counts_dir, f"{batch_id:09d}.json"), json.dumps(asdict(counts)))
    else:
        labels = read_labels_file(spark, ingest.labels).persist() if ingest.labels.source == "file" else None

        def each_batch(batch: DataFrame, batch_id: int) -> None:
            counts = ingest_batch(spark, config, batch, base, f"{run_id}-b{batch_id}", labels=labels)
            log.info("stream batch %d: %s", batch_id, counts)
            totals.add(counts)
            if on_batch is not None:
                on_batch(totals)

    writer = (
        read_files(spark, input_root, config, stream=True).writeStream
        .foreachBatch(each_batch)
        .option("checkpointLocation", checkpoint_path(config))
        .queryName(f"imgshards-ingest-{run_id}")
    )
    trigger = ingest.stream.trigger
    writer = writer.trigger(availableNow=True) if trigger == "available_now" else writer.trigger(processingTime=trigger)
    query = writer.start()
    if is_connect(spark):
        _follow_counts(spark, query, counts_dir, totals, on_batch)
    else:
        query.awaitTermination()
    totals.check()
    return totals


# How often a Spark Connect client looks for the counts of finished micro-batches.
COUNTS_POLL_S = 2.0


def _follow_counts(spark: SparkSession, query, counts_dir: str, totals: IngestCounts,
                   on_batch: Optional[Callable[[IngestCounts], None]]) -> None:
    """Until the query ends, fold each micro-batch's counts file into ``totals`` as it appears (in batch
    order) and call ``on_batch``; a failed query raises from ``awaitTermination`` as on a classic session."""
    import pyarrow.fs as pafs

    fs, root = storage.arrow_fs(spark, counts_dir)
    folded: set = set()
    while True:
        finished = query.awaitTermination(COUNTS_POLL_S)
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        for info in sorted((i for i in infos if i.base_name.endswith(".json")), key=lambda i: i.base_name):
            if info.base_name in folded:
                continue
            with fs.open_input_stream(info.path) as f:
                counts = IngestCounts(**json.loads(f.read()))
            folded.add(info.base_name)
            log.info("stream batch %d: %s", int(info.base_name[:-5]), counts)
            totals.add(counts)
            if on_batch is not None:
                on_batch(totals)
        if finished:
            return
