"""The jobs: one module each, ``parse_args(argv)`` -> ``run(spark, config, args, run_id)`` -> ``main()``.

``JOBS`` is the job contract every launcher follows: ``spark-submit.sh`` runs ``jobs/<name>.py`` (which
calls the module's ``main``), wheel tasks run the console script ``imgshards-<name>``, and the job
definitions under ``deploy/`` are generated from it (``imgshards.deploy``).
"""
from __future__ import annotations

import argparse
import importlib

JOBS = ("ingest", "preprocess", "export", "pipeline", "report", "history", "doctor")


def job_module(name: str):
    """The module of job ``name``; ValueError naming the known jobs for any other name."""
    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    return importlib.import_module(f"imgshards.jobs.{name}")


def job_parser(name: str) -> argparse.ArgumentParser:
    return job_module(name).parse_args()


def console_script(name: str) -> str:
    """The console script (wheel entry point) of job ``name``."""
    job_module(name)
    return f"imgshards-{name}"
