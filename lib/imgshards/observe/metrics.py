"""A run's outcome as Prometheus metrics, pushed to a Pushgateway (``metrics.pushgateway``).

Each run is one group on the gateway: ``job="imgshards_<job>"`` and ``run_id``. Counters (``…_total``)
hold what the run did, gauges its durations, throughput, the Delta table versions after it and, when it
succeeded, the time it did. A streaming ingest pushes its running totals after every micro-batch (a push
replaces the group, so the totals are always the latest). Metrics never fail a run: a gateway that cannot
be reached costs one warning.

The series are built from the run summary the job prints, so the two always agree
(``tests/test_observability.py`` compares them).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway

from imgshards.config import PipelineConfig

log = logging.getLogger(__name__)

NAMESPACE = "imgshards"
ENV_PUSHGATEWAY = "IMGSHARDS_PUSHGATEWAY"

# Which count of a stage's summary is its "images" for images/s.
_STAGE_IMAGES = {
    "ingest": lambda s: s["seen"],
    "preprocess": lambda s: s["processed"],
    "export": lambda s: sum(s["rows"].values()),
}


def stage_images(stage: str, section: Optional[dict]) -> Optional[int]:
    """The images a stage handled, from its summary section (None for stages that count none)."""
    return _STAGE_IMAGES[stage](section) if stage in _STAGE_IMAGES and section else None


_warned: set = set()  # gateways already warned about in this process: one warning each, not one per push


def pushgateway_url(config: PipelineConfig) -> Optional[str]:
    return config.metrics.pushgateway or os.environ.get(ENV_PUSHGATEWAY) or None


def gateway_job(job: str) -> str:
    """The ``job`` label of a job's group on the gateway."""
    return f"{NAMESPACE}_{job}"


def build_registry(summary: dict) -> CollectorRegistry:
    """The metrics of one run summary (any job's: the sections it has become series)."""
    registry = CollectorRegistry()

    def counter(name: str, documentation: str, labels=()) -> Counter:
        return Counter(name, documentation, labels, namespace=NAMESPACE, registry=registry)

    def gauge(name: str, documentation: str, labels=()) -> Gauge:
        return Gauge(name, documentation, labels, namespace=NAMESPACE, registry=registry)

    read = counter("read_bytes", "Bytes read by a stage (image files, encoded images)", ["stage"])
    written = counter("written_bytes", "Bytes a stage wrote (processed images, exported Parquet files)", ["stage"])
    quarantined = counter("quarantined_files", "Files quarantined, by stage and reason", ["stage", "reason"])

    ingest = summary.get("ingest")
    if ingest:
        counter("files_seen", "Files found under the input").inc(ingest["seen"])
        outcomes = counter("files", "Files seen, by what became of them", ["outcome"])
        for outcome, key in (("ingested", "ingested"), ("updated", "updated"), ("unchanged", "unchanged"),
                             ("duplicate", "duplicates"), ("quarantined", "quarantined")):
            outcomes.labels(outcome).inc(ingest[key])
        outcomes.labels("skipped").inc(ingest["skipped_hidden"] + ingest["skipped_non_image"])
        skipped = counter("skipped_files", "Files skipped without reading, by reason", ["reason"])
        skipped.labels("hidden").inc(ingest["skipped_hidden"])
        skipped.labels("non_image").inc(ingest["skipped_non_image"])
        for reason, n in ingest["quarantine_reasons"].items():
            quarantined.labels("ingest", reason).inc(n)
        counter("marked_deleted_images", "Images marked deleted (their file is gone)").inc(ingest["marked_deleted"])
        counter("purged_images", "Images removed for good (their file is gone, ingest.missing: purge)").inc(
            ingest.get("purged", 0))
        superseded = counter("superseded_rows", "Rows of earlier runs retired because a file's verdict changed, by table",
                             ["table"])
        for table, n in (ingest.get("superseded") or {}).items():
            superseded.labels(table).inc(n)
        counter("stream_batches", "Micro-batches (batch runs: 1)").inc(ingest["batches"])
        clusters = ingest.get("near_duplicates") or {}
        gauge("near_duplicate_clusters", "Near-duplicate clusters found by this run").set(clusters.get("clusters", 0))
        gauge("near_duplicate_clusters_crossing_splits", "Of those, clusters whose images sit in several splits").set(
            clusters.get("crossing_splits", 0))
        flagged = counter("quality_flagged_images", "Images ingested by this run past a quality threshold, by signal",
                          ["signal"])
        for signal, n in (ingest.get("quality") or {}).items():
            flagged.labels(signal).inc(n)
        conflicts = counter("label_conflicts", "Files found by this run under another label than their content's "
                            "(duplicate) or their near-duplicate cluster's (near_duplicate)", ["kind"])
        for kind in ("duplicate", "near_duplicate"):
            conflicts.labels(kind).inc((ingest.get("label_conflicts") or {}).get(kind, 0))
        read.labels("ingest").inc(ingest["read_bytes"])

    pre = summary.get("preprocess")
    if pre:
        processed = counter("images_processed", "Samples made, by backend and device", ["backend", "device"])
        for key, n in (pre["backends"] or {}).items():
            backend, _, device = key.partition(" on ")
            processed.labels(backend, device).inc(n)
        counter("augmented_copies", "Augmented copies made (part of images_processed)").inc(pre["augmented"])
        counter("images_already_processed", "Samples already in processed with these settings").inc(pre["already_processed"])
        gpu = counter("gpu_task_images", "Samples made by tasks Spark gave a GPU, by GPU address", ["gpu"])
        for address, n in (pre["task_gpus"] or {}).items():
            gpu.labels(address).inc(n)
        for reason, n in (pre["quarantine_reasons"] or {}).items():
            quarantined.labels("preprocess", reason).inc(n)
        read.labels("preprocess").inc(pre["read_bytes"])
        written.labels("preprocess").inc(pre["written_bytes"])

    export = summary.get("export")
    if export:
        rows = counter("exported_rows", "Rows exported, by split", ["split"])
        for split, n in export["rows"].items():
            rows.labels(split).inc(n)
        read.labels("export").inc(export["read_bytes"])
        written.labels("export").inc(export["written_bytes"])

    seconds = summary.get("seconds") or {}
    duration = gauge("stage_duration_seconds", "Wall time of a stage (the job itself under its own name)", ["stage"])
    rate = gauge("stage_images_per_second", "Images a stage handled per second of its wall time", ["stage"])
    for stage, value in seconds.items():
        duration.labels(stage).set(value)
        images = stage_images(stage, summary.get(stage))
        if images is not None and value > 0:
            rate.labels(stage).set(images / value)

    versions = gauge("delta_table_version", "Latest version of each Delta table after the run", ["table"])
    for table, version in (summary.get("delta_versions") or {}).items():
        if version is not None:
            versions.labels(table).set(version)

    ok = summary.get("ok", True)
    gauge("run_ok", "1 when the run succeeded").set(1 if ok else 0)
    if ok:
        gauge("last_success_timestamp_seconds", "When the run last succeeded (Unix time)").set(time.time())
    return registry


def push(config: PipelineConfig, job: str, run_id: str, summary: dict) -> bool:
    """Push ``summary`` as the run's group; False (and one warning per gateway) when it could not be pushed."""
    url = pushgateway_url(config)
    if not url:
        return False
    try:
        push_to_gateway(url, job=gateway_job(job), grouping_key={"run_id": run_id}, registry=build_registry(summary),
                        timeout=config.metrics.timeout_seconds)
    except Exception as e:
        if url not in _warned:
            _warned.add(url)
            log.warning("metrics: could not push to the Pushgateway %s (%s: %s); the run goes on without metrics",
                        url, type(e).__name__, e)
        return False
    log.info("metrics: pushed %s run %s to %s", job, run_id, url)
    return True
