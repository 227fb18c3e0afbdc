"""Where a run's time went, from its Spark event log: per pipeline stage, the wall time, the Spark jobs
and their time, the driver-side time between them (planning, Delta log work, Python on the driver), task
time and bytes; then the slowest Spark jobs with the line of code that started them.

Turn the event log on for a run, then point this at the log file (or its folder: the newest log in it):

    SPARK_SUBMIT_OPTS_EXTRA="--conf spark.eventLog.enabled=true --conf spark.eventLog.dir=/tmp/events" \\
        ./spark-submit.sh pipeline
    .venv/bin/python benchmarks/profile_run.py /tmp/events [--top 15]

Jobs are grouped by the ``imgshards.stage`` property the jobs set on the Spark jobs they start (ingest,
preprocess, export, report). A stage's wall time runs from the end of the previous stage's last Spark job
(or the application's start) to the end of its own last one, so the driver work before a stage's first job
counts to that stage. Jobs the driver runs beside a stage (imgshards.runtime.background: ``start``, the Python
workers' start; ingest opening its tables; export's channel statistics; the pipeline's report gathering
its table sections during export) are listed apart, each group with its span, and take no part in the
stages' wall times.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from dataclasses import dataclass, field

STAGE_PROPERTY = "imgshards.stage"
BACKGROUND_GROUP = "imgshards-background"  # imgshards.observe.progress.BACKGROUND_GROUP (no import: runs without Spark)


@dataclass
class Job:
    job_id: int
    stage: str
    call_site: str
    submitted: int  # ms since the epoch
    completed: int = 0
    tasks: int = 0
    task_ms: int = 0
    input_bytes: int = 0
    shuffle_bytes: int = 0
    ok: bool = True
    background: bool = False

    @property
    def seconds(self) -> float:
        return (self.completed - self.submitted) / 1000


@dataclass
class Run:
    app: str = ""
    started: int = 0
    ended: int = 0
    jobs: dict = field(default_factory=dict)  # job id -> Job


def _lines(path: str):
    """The events of the log at ``path``: one file (plain or .gz), or a rolling log's folder
    (``eventlog_v2_<app>/events_<n>_<app>[.zstd]``, Spark 4's default), its files in order."""
    if os.path.isdir(path):
        parts = [name for name in os.listdir(path) if name.startswith("events_")]
        for name in sorted(parts, key=lambda n: int(n.split("_")[1])):
            yield from _lines(os.path.join(path, name))
        return
    if path.endswith(".zstd"):
        import io

        import zstandard

        with open(path, "rb") as raw:
            stream = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
            lines = list(stream)
    else:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            lines = list(f)
    for line in lines:
        if line.strip():
            yield json.loads(line)


def event_log(path: str) -> str:
    """``path`` itself, or the newest event log (a file, or a rolling log's folder) in the folder ``path``."""
    if os.path.isdir(path) and os.path.basename(path.rstrip("/")).startswith("eventlog_v2_"):
        return path
    if os.path.isdir(path):
        logs = [os.path.join(path, name) for name in os.listdir(path) if not name.startswith(".")]
        if not logs:
            raise SystemExit(f"{path}: no event logs in this folder")
        return max(logs, key=os.path.getmtime)
    return path


def read_run(path: str) -> Run:
    run = Run()
    stage_jobs = {}  # Spark stage id -> job id
    for event in _lines(path):
        kind = event["Event"]
        if kind == "SparkListenerApplicationStart":
            run.app, run.started = event.get("App Name", ""), event["Timestamp"]
        elif kind == "SparkListenerApplicationEnd":
            run.ended = event["Timestamp"]
        elif kind == "SparkListenerJobStart":
            properties = event.get("Properties") or {}
            job = Job(event["Job ID"], properties.get(STAGE_PROPERTY) or "(no stage)",
                      properties.get("callSite.short") or "", event["Submission Time"],
                      background=properties.get("spark.jobGroup.id") == BACKGROUND_GROUP)
            for stage_id in event.get("Stage IDs") or []:
                stage_jobs[stage_id] = job.job_id
            run.jobs[job.job_id] = job
        elif kind == "SparkListenerJobEnd":
            job = run.jobs.get(event["Job ID"])
            if job is not None:
                job.completed = event["Completion Time"]
                job.ok = (event.get("Job Result") or {}).get("Result") == "JobSucceeded"
        elif kind == "SparkListenerTaskEnd":
            job = run.jobs.get(stage_jobs.get(event.get("Stage ID")))
            info, metrics = event.get("Task Info") or {}, event.get("Task Metrics") or {}
            if job is not None:
                job.tasks += 1
                job.task_ms += (info.get("Finish Time") or 0) - (info.get("Launch Time") or 0)
                job.input_bytes += (metrics.get("Input Metrics") or {}).get("Bytes Read", 0)
                job.shuffle_bytes += (metrics.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0)
    if not run.ended:  # a killed run: up to its last event that has a time
        run.ended = max([run.started] + [j.completed or j.submitted for j in run.jobs.values()])
    for job in run.jobs.values():
        job.completed = job.completed or run.ended
    return run


def _union_ms(intervals: list) -> int:
    """Total length of the union of (start, end) intervals."""
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def _row(name: str, jobs: list, wall_ms: int) -> tuple:
    busy = _union_ms([(j.submitted, j.completed) for j in jobs])
    return (name, wall_ms / 1000, len(jobs), busy / 1000, max(wall_ms - busy, 0) / 1000, sum(j.tasks for j in jobs),
            sum(j.task_ms for j in jobs) / 1000, sum(j.input_bytes for j in jobs) / 1e6,
            sum(j.shuffle_bytes for j in jobs) / 1e6)


def _groups(jobs) -> list:
    """Consecutive runs of jobs of one stage, in submission order: [(stage, [jobs])]."""
    groups = []
    for job in sorted(jobs, key=lambda j: j.submitted):
        if groups and groups[-1][0] == job.stage:
            groups[-1][1].append(job)
        else:
            groups.append((job.stage, [job]))
    return groups


def stages(run: Run) -> list:
    """[(stage, wall s, jobs, union of job time s, driver-only s, tasks, task s, input MB, shuffle MB)] of the
    stages' own jobs (a stage that comes back is listed again); their wall times add up to the run's."""
    rows, previous_end = [], run.started
    for name, jobs in _groups(j for j in run.jobs.values() if not j.background):
        end = max(j.completed for j in jobs)
        rows.append(_row(name, jobs, max(end - previous_end, 0)))
        previous_end = max(previous_end, end)
    if run.ended > previous_end:
        rows.append(("(after the last job)", (run.ended - previous_end) / 1000, 0, 0.0,
                     (run.ended - previous_end) / 1000, 0, 0.0, 0.0, 0.0))
    return rows


def background(run: Run) -> list:
    """The same columns for the jobs run beside the stages, one row per consecutive group, its wall time
    the span from its first job's submission to its last job's end."""
    return [_row(name, jobs, max(j.completed for j in jobs) - min(j.submitted for j in jobs))
            for name, jobs in _groups(j for j in run.jobs.values() if j.background)]


def report(run: Run, top: int) -> str:
    lines = [f"{run.app}: {(run.ended - run.started) / 1000:.1f} s from application start to end, "
             f"{len(run.jobs)} Spark jobs", "",
             "| stage | wall s | Spark jobs | in jobs s | driver only s | tasks | task s | input MB | shuffle MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    beside = [(f"{row[0]} (beside)",) + row[1:] for row in background(run)]
    for name, wall, jobs, busy, driver, tasks, task_s, input_mb, shuffle_mb in stages(run) + beside:
        lines.append(f"| {name} | {wall:.1f} | {jobs} | {busy:.1f} | {driver:.1f} | {tasks} | {task_s:.1f} "
                     f"| {input_mb:.1f} | {shuffle_mb:.1f} |")
    if beside:
        lines += ["", "Rows marked (beside): Spark jobs the driver ran in the background, beside the stages above; "
                  "their wall time is their span and is not part of the total."]
    lines += ["", f"The {top} slowest Spark jobs:", "",
              "| job | stage | s | tasks | task s | input MB | started by |", "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for job in sorted(run.jobs.values(), key=lambda j: -j.seconds)[:top]:
        failed = "" if job.ok else " (failed)"
        lines.append(f"| {job.job_id} | {job.stage} | {job.seconds:.2f}{failed} | {job.tasks} | {job.task_ms / 1000:.1f} "
                     f"| {job.input_bytes / 1e6:.1f} | {job.call_site} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("event_log", help="a Spark event log file, or the spark.eventLog.dir folder (its newest log)")
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest Spark jobs to list")
    parser.add_argument("--json", action="store_true", help="print the stage table as JSON instead")
    args = parser.parse_args(argv)
    run = read_run(event_log(args.event_log))
    if args.json:
        columns = ("stage", "wall_s", "jobs", "in_jobs_s", "driver_only_s", "tasks", "task_s", "input_mb", "shuffle_mb")
        print(json.dumps({"app": run.app, "wall_s": (run.ended - run.started) / 1000, "jobs": len(run.jobs),
                          "stages": [dict(zip(columns, row)) for row in stages(run)],
                          "background": [dict(zip(columns, row)) for row in background(run)]}, indent=2))
    else:
        print(report(run, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
