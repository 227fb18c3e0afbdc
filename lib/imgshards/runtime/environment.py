"""The packed environment (scripts/package.sh) on a Spark Connect session.

spark-submit ships it with ``--archives <archive>#environment``; a Spark Connect client has no spark-submit,
so the job uploads it as a session artifact (``addArtifacts(..., archive=True)``), which the server unpacks as
``environment/`` in the session's working directory on every executor, and points the session's Python
workers at ``environment/bin/python`` (Spark's Python package management for Spark Connect). The doctor job
then reports ``packed environment`` for each executor, as on a cluster.
"""
from __future__ import annotations

import logging
import os

from imgshards.config import ConfigError
from imgshards.session import is_connect

log = logging.getLogger(__name__)

NAME = "environment"  # as spark-submit.sh's --archives ...#environment
PYTHON_CONF = "spark.sql.execution.pyspark.python"


def ship(spark, archive: str) -> None:
    """Upload ``archive`` to the Spark Connect session and run the session's Python workers from it."""
    if not is_connect(spark):
        log.info("connect.environment is for Spark Connect sessions; this session's executors run what "
                 "spark-submit or the cluster gave them")
        return
    if not os.path.isfile(archive):
        raise ConfigError(f"connect.environment: no archive at {archive}")
    spark.addArtifacts(f"{os.path.abspath(archive)}#{NAME}", archive=True)
    spark.conf.set(PYTHON_CONF, f"{NAME}/bin/python")
    log.info("connect.environment: %s uploaded; the executors' Python workers run %s/bin/python", archive, NAME)
