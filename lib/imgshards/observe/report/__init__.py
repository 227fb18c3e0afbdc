"""The dataset report: one self-contained HTML file beside the export (``<output>/report.html``).

:mod:`imgshards.report.collect` gathers what it shows with Spark aggregations (bounded by the ``report.*``
settings, whatever the dataset's size); :mod:`imgshards.report.render` draws the plots and the page.
"""
from __future__ import annotations

import logging
from typing import Optional

from pyspark.sql import SparkSession

from imgshards.config import PipelineConfig, join_path
from imgshards.io import storage

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"


def write_report(spark: SparkSession, config: PipelineConfig, run_id: str, runs: Optional[dict] = None,
                 found: Optional[dict] = None) -> str:
    """Write ``<output>/report.html`` and return where it is. ``runs``: run summaries to describe;
    ``found``: the sections from the tables, when gathered already (:func:`collect.from_tables`)."""
    from imgshards.observe.report.collect import gather
    from imgshards.observe.report.render import render

    html = render(gather(spark, config, runs, found), run_id)
    url = join_path(config.output, REPORT_FILE)
    storage.write_text(spark, url, html)
    log.info("report: %s (%d KB)", url, len(html) // 1024)
    return url
