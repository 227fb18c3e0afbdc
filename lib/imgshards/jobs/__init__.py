"""The jobs: one module each, declaring its :class:`~imgshards.jobs.contract.Job` as ``JOB``.

``JOBS`` lists them; every launcher follows it: ``spark-submit.sh`` runs ``jobs/<name>.py`` (the module's
``main``), wheel tasks run the console script ``imgshards-<name>`` (``JOB.platform_main``), and the job
definitions under ``deploy/`` are generated from it (``imgshards.deploy``). Adding a job: its module here,
its name in ``JOBS``, its launcher ``jobs/<name>.py`` and console script in ``pyproject.toml`` (a test checks
that both exist), and its invocations in ``deploy/contract.yaml``.
"""
from __future__ import annotations

import importlib

from imgshards.jobs.contract import Job

JOBS = ("ingest", "preprocess", "export", "pipeline", "report", "history", "doctor", "forget")


def get_job(name: str) -> Job:
    """The declared job ``name``; ValueError naming the known jobs for any other name."""
    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    return importlib.import_module(f"imgshards.jobs.{name}").JOB


def console_script(name: str) -> str:
    """The console script (wheel entry point) of job ``name``."""
    return f"imgshards-{get_job(name).name}"
