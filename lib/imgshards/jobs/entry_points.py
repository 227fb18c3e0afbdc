"""Console scripts of the wheel (``imgshards-<job>``), for platforms that run a wheel's entry point
inside a Spark session they own (Databricks ``python_wheel_task``): the job gets that session and
leaves it running, since the platform, not the job, created it."""
from __future__ import annotations

from imgshards.jobs import job_module


def _in_platform_session(name: str):
    def entry_point() -> int:
        return job_module(name).main(stop_session=False)

    entry_point.__doc__ = f"Run the {name} job in the platform's Spark session."
    return entry_point


ingest = _in_platform_session("ingest")
preprocess = _in_platform_session("preprocess")
export = _in_platform_session("export")
pipeline = _in_platform_session("pipeline")
history = _in_platform_session("history")
doctor = _in_platform_session("doctor")
report = _in_platform_session("report")
