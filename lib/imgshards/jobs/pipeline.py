"""Run ingest -> preprocess -> export -> report in one run, with a summary whose counts add up.

With no input configured, it generates a small labeled sample dataset under <workdir>/sample first:

    ./spark-submit.sh pipeline                          # embedded default
    ./spark-submit.sh pipeline --input /data/raw --output /data/shards
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time

from pyspark.sql import SparkSession

from imgshards.config import PipelineConfig
from imgshards.export.run import published_as_is, run_export
from imgshards.ingest.run import run_ingest
from imgshards.jobs.contract import Job
from imgshards.observe import progress
from imgshards.observe.report import write_report
from imgshards.observe.report.collect import from_tables
from imgshards.preprocess.run import run_preprocess
from imgshards.runtime.background import Background
from imgshards.sample import make_sample_dataset
from imgshards.schemas import TABLES

log = logging.getLogger(__name__)

SAMPLE_DIR = "sample"


def ensure_sample_input(config: PipelineConfig) -> str:
    """The embedded sample dataset under ``<workdir>/sample``, generated once (it is deterministic)."""
    root = os.path.join(config.workdir, SAMPLE_DIR)
    marker = root + ".complete"  # beside the folder, so it is not one of the sample's files
    if not os.path.exists(marker):
        log.info("no input configured: generating the sample dataset in %s", root)
        manifest = make_sample_dataset(root)
        with open(marker, "w") as f:
            f.write(f"{manifest.files}\n")
    return root


@contextlib.contextmanager
def _timed(seconds: dict, stage: str):
    started = time.monotonic()
    with progress.stage(stage):
        yield
    seconds[stage] = round(time.monotonic() - started, 3)


def _report_sections(spark: SparkSession, config: PipelineConfig) -> dict:
    """The report's sections from the tables, with the page's plotting library imported meanwhile (matplotlib,
    about a second, which would otherwise come after export)."""
    import imgshards.observe.report.render  # noqa: F401

    return from_tables(spark, config)


def run_pipeline(spark: SparkSession, config: PipelineConfig, run_id: str) -> dict:
    input_root = config.input or ensure_sample_input(config)
    seconds: dict = {}
    with _timed(seconds, "ingest"):
        ingest = run_ingest(spark, config, input_root, run_id)
    with _timed(seconds, "preprocess"):
        preprocess = run_preprocess(spark, config, run_id)
    # Export writes no table, so the report's sections from the tables are gathered beside it: on two cores
    # each fills the other's driver-only gaps (planning, Delta's log work).
    report_tables = Background("report", _report_sections, spark, config) if config.report.enabled else None
    try:
        with _timed(seconds, "export"):
            # Nothing ingested, updated, marked deleted or purged, nothing made: the published export, if it came from
            # this version with these settings, is what a new one would hold; it stays published.
            unchanged = not (ingest.ingested or ingest.updated or ingest.marked_deleted or ingest.purged
                             or ingest.superseded.get("images")
                             or preprocess.processed)
            export = published_as_is(spark, config, preprocess.source_version) if unchanged else None
            if export is None:
                export = run_export(spark, config, run_id, preprocess.source_version)
            else:
                log.info("nothing changed since %s was published: kept it", export.version_dir)
    except BaseException:
        if report_tables is not None:
            report_tables.wait()  # no report job left running in a session that outlives this run
        raise
    summary = {
        "input": input_root,
        "tables": {name: str(config.table(name)) for name in TABLES},
        "per_class": export.counts,
        "output": export.output,
        "ingest": dataclasses.asdict(ingest),
        "preprocess": dataclasses.asdict(preprocess),
        "export": {k: v for k, v in dataclasses.asdict(export).items() if k != "counts"},
        "seconds": seconds,
    }
    if report_tables is not None:
        with _timed(seconds, "report"):  # what is left of it once export is done
            summary["report"] = write_report(spark, config, run_id, runs={"pipeline": {"run_id": run_id, **summary}},
                                             found=report_tables.result())
    return summary


def _findings(ingest: dict) -> str:
    """Near-duplicate clusters, label conflicts and quality flags of an ingest, in one line."""
    clusters = (ingest.get("near_duplicates") or {}).get("clusters", 0)
    conflicts = {k: v for k, v in (ingest.get("label_conflicts") or {}).items() if k != "examples"}
    flagged = ", ".join(f"{k}={v}" for k, v in (ingest.get("quality") or {}).items() if v) or "none"
    return (f"near-duplicate clusters {clusters}; label conflicts {sum(conflicts.values())}"
            + (f" ({', '.join(f'{k}={v}' for k, v in sorted(conflicts.items()))})" if conflicts else "")
            + f"; quality flags {flagged}")


def format_summary(summary: dict) -> str:
    """The human-readable run summary the pipeline prints."""
    ingest, pre, export = summary["ingest"], summary["preprocess"], summary["export"]
    reasons = ", ".join(f"{k}={v}" for k, v in ingest["quarantine_reasons"].items()) or "none"
    pre_reasons = ", ".join(f"{k}={v}" for k, v in (pre["quarantine_reasons"] or {}).items()) or "none"
    lines = [
        f"run {summary['run_id']}",
        f"input          {summary['input']}",
        "ingest",
        f"  files seen   {ingest['seen']} = ingested {ingest['ingested']} + updated {ingest['updated']}"
        f" + unchanged {ingest['unchanged']} + duplicates {ingest['duplicates']} + quarantined {ingest['quarantined']}"
        f" + skipped {ingest['skipped_hidden'] + ingest['skipped_non_image']}"
        f" (hidden {ingest['skipped_hidden']}, non-image {ingest['skipped_non_image']})",
        f"  quarantined  {reasons}",
        f"  findings     {_findings(ingest)}",
        "preprocess",
        f"  images v{pre['source_version']}    processed {pre['processed']} (augmented copies {pre['augmented']})"
        f" + already processed {pre['already_processed']} + quarantined {pre['quarantined']} ({pre_reasons})",
        f"  backends     {', '.join(f'{k}={v}' for k, v in sorted((pre['backends'] or {}).items())) or '(none)'}",
        "export",
        f"  shards       {summary['output']}" + ("  (nothing changed: the published version kept)" if export["kept"] else ""),
    ]
    for split, rows in export["rows"].items():
        lines.append(f"  {split:<12} {rows} rows")
    lines.append(f"  classes      {', '.join(export['classes']) or '(unlabeled)'}")
    if summary.get("report"):
        lines.append(f"report         {summary['report']}")
    lines.append("tables")
    lines += [f"  {name:<12} {path}" for name, path in summary["tables"].items()]
    return "\n".join(lines)


def run(spark, config, args, run_id):
    return run_pipeline(spark, config, run_id)


JOB = Job("pipeline", __doc__, run, locations=("input", "warehouse", "output"), formatter=format_summary)
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
