"""What a batch ingest of an input left behind, so that a re-run with nothing new does not read the files.

After a batch ingest the driver writes ``<warehouse>/_state/ingest/<input>.json``: a digest of the listing
(every path, size and modification time), of the ingest settings and of the labels file; the versions it
left the three tables at; and the counts a re-run would report. A later run whose digest and table versions
are the same returns those counts without a Spark job: reading every file again could only find what the
last run found. Anything else makes the run read everything, as before: a file added, removed, resized or
touched, a setting changed, a commit to any of the tables by another run.

The state is written only when every commit to the tables since the run began is the run's own (or a
table's creation), and not after a run that quarantined a file as ``unreadable`` (a permission or a network
error may be gone next time). A file is taken as unchanged when its size and modification time are, as
rsync and make take it (Databricks Auto Loader, by default, goes by the path alone); ``ingest.skip_unchanged:
false`` reads every file on every run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Iterable

from pyspark.sql import SparkSession

from imgshards import __version__
from imgshards.config import PipelineConfig
from imgshards.delta import run_state
from imgshards.ingest.counts import IngestCounts
from imgshards.ingest.labels import labels_file_status
from imgshards.schemas import DUPLICATES_TABLE, FORGOTTEN_TABLE, IMAGES_TABLE, QUARANTINE_TABLE

log = logging.getLogger(__name__)

INGEST_TABLES = (IMAGES_TABLE, QUARANTINE_TABLE, DUPLICATES_TABLE, FORGOTTEN_TABLE)
# Reasons that may not hold next time although the file did not change: never skipped over.
TRANSIENT_REASONS = ("unreadable",)


def in_use(config: PipelineConfig) -> bool:
    """Whether ``ingest.skip_unchanged`` is on and the warehouse keeps state (:func:`run_state.usable`)."""
    return config.ingest.skip_unchanged and run_state.usable(config)


def listing_digest(spark: SparkSession, config: PipelineConfig, base: str, listing: Iterable) -> str:
    """A digest of what decides the ingest's outcome apart from the tables: the listing, the settings, the
    labels file (its size and modification time) and this code's version."""
    digest = hashlib.sha256()
    labels_file = labels_file_status(spark, config.ingest.labels)
    head = {"version": __version__, "base": base, "settings": config.fingerprint("ingest"), "labels_file": labels_file}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for f in sorted(listing, key=lambda f: f.path):
        digest.update(f"\n{f.path}\t{f.size_bytes}\t{f.modified_ns}".encode())
    return digest.hexdigest()




def _name(base: str) -> str:
    return "ingest/" + hashlib.sha256(base.encode()).hexdigest()[:16]


def table_versions(spark: SparkSession, config: PipelineConfig) -> dict:
    return run_state.table_versions(spark, config, INGEST_TABLES)


def unchanged_counts(spark: SparkSession, config: PipelineConfig, base: str, digest: str):
    """The counts of a re-run when nothing changed since the last run's state, else None."""
    state = run_state.load(spark, config, _name(base))
    if not state or state.get("digest") != digest:
        return None
    versions = table_versions(spark, config)
    if versions != state.get("versions"):
        log.info("the tables changed since the last ingest of %s (%s, then %s): reading every file",
                 base, state.get("versions"), versions)
        return None
    return IngestCounts(**state["counts"])


def record(spark: SparkSession, config: PipelineConfig, base: str, digest: str, before: dict, counts,
           run_id: str) -> None:
    """Store the state after a run that began with the tables at ``before`` and ended with ``counts``."""
    if any(counts.quarantine_reasons.get(reason) for reason in TRANSIENT_REASONS):
        return
    after = run_state.kept_after(spark, config, before, run_id)
    if after is not None:
        run_state.save(spark, config, _name(base), {"base": base, "digest": digest, "versions": after,
                                                    "run_id": run_id, "counts": dataclasses.asdict(as_rerun(counts))})


def as_rerun(counts):
    """What a run that reads every file again reports after ``counts``: what was written is unchanged."""
    rerun = IngestCounts(
        seen=counts.seen, unchanged=counts.unchanged + counts.ingested + counts.updated,
        duplicates=counts.duplicates, quarantined=counts.quarantined, skipped_hidden=counts.skipped_hidden,
        skipped_non_image=counts.skipped_non_image, quarantine_reasons=dict(counts.quarantine_reasons),
        labels_report=dict(counts.labels_report),
    )
    # A duplicate is one again when read again, and so is its label conflict, as is a quarantined one's; a
    # near-duplicate's that was ingested is not (its image is then unchanged).
    again = ("duplicate", "near_duplicate") if counts.quarantine_reasons.get("label_conflict") else ("duplicate",)
    found = {kind: counts.label_conflicts[kind] for kind in again if counts.label_conflicts.get(kind)}
    if found:
        rerun.label_conflicts = {**found, "examples": [e for e in counts.label_conflicts.get("examples", [])
                                                       if e["kind"] in found]}
    if "files_without_label" in rerun.labels_report:  # only the quarantined ones: the rest is not written again
        rerun.labels_report.update(files_without_label=counts.quarantine_reasons.get("unlabeled", 0),
                                   files_without_label_examples=[])
    rerun.check()
    return rerun
