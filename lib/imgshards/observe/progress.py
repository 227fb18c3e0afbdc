"""How far a long job is, while it runs: one log line every ``progress.interval_seconds``.

A thread on the driver reads Spark's status tracker (the tasks of the Spark stages that ran or run in the
current pipeline stage) and an accumulator the image functions add to as their tasks finish. A line says
the pipeline stage, tasks done of those known so far, images and images/s, and the time left estimated from
the task rate. The first line comes one interval after the start, so a short run prints none.

A Spark Connect session has neither: there the stages' tasks come from Spark 4's progress handler
(``registerProgressHandler``), the lines count tasks only, and background work is not told apart.

    with progress.track(spark, config.progress.interval_seconds, "pipeline"):
        with progress.stage("ingest", images=len(candidates)):
            ... mapInPandas(functools.partial(fn, done=progress.images_counter()))
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Iterator, Optional

log = logging.getLogger("imgshards.observe.progress")


class Progress:
    def __init__(self, spark, interval_s: float, job: str):
        from imgshards.session import is_connect

        self._spark = spark
        self._sc = None if is_connect(spark) else spark.sparkContext
        self._interval = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="imgshards-progress", daemon=True)
        self.stage_name = job
        self.stage_images: Optional[int] = None
        self._stage_started = time.monotonic()
        self._stages: dict = {}  # Spark stage id -> (tasks, completed), for the current pipeline stage
        self.counter = self._sc.accumulator(0) if self._sc is not None else None
        self._counter_base = 0
        self._reported: dict = {}  # Connect: Spark stage id -> (tasks, completed), from the progress handler

    def begin(self, name: str, images: Optional[int]) -> None:
        with self._lock:
            self.stage_name, self.stage_images = name, images
            self._stage_started = time.monotonic()
            self._stages = {}
            self._reported = {}
            self._counter_base = self.counter.value if self.counter is not None else 0

    def start(self) -> None:
        if self._sc is None:
            self._spark.registerProgressHandler(self._handle)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._sc is None:
            self._spark.removeProgressHandler(self._handle)

    def _handle(self, stages, inflight_tasks, operation_id, done) -> None:
        """Spark Connect's progress handler: the stages of the running operation, as the server reports them."""
        with self._lock:
            for info in stages or ():
                self._reported[info.stage_id] = (info.num_tasks, info.num_completed_tasks)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                line = self.line()
            except Exception as e:
                log.debug("progress: status tracker read failed: %s", e)
                continue
            if line:
                log.info(line)

    def _refresh(self) -> tuple[int, int]:
        if self._sc is None:
            return sum(t for t, _ in self._reported.values()), sum(d for _, d in self._reported.values())
        tracker = self._sc.statusTracker()
        # Active stages first: a stage is active only after its job started, so its job is in the group's.
        active = set(tracker.getActiveStageIds())
        background = {stage_id for job_id in tracker.getJobIdsForGroup(BACKGROUND_GROUP)
                      for stage_id in getattr(tracker.getJobInfo(job_id), "stageIds", ())}
        for stage_id in active - background | set(self._stages):
            info = tracker.getStageInfo(stage_id)
            if info is not None:
                self._stages[stage_id] = (info.numTasks, info.numCompletedTasks)
            elif stage_id in self._stages:  # forgotten by Spark: it finished
                tasks = self._stages[stage_id][0]
                self._stages[stage_id] = (tasks, tasks)
        return sum(t for t, _ in self._stages.values()), sum(d for _, d in self._stages.values())

    def line(self) -> str:
        """The progress line for now (empty while no Spark task has been seen)."""
        with self._lock:
            total, done = self._refresh()
            elapsed = time.monotonic() - self._stage_started
            images = self.counter.value - self._counter_base if self.counter is not None else 0
            name, expected = self.stage_name, self.stage_images
        if not total:
            return ""
        parts = [f"progress {name}: {done}/{total} tasks ({100 * done // total}%)"]
        if images:
            of = f" of {expected:,}" if expected else ""
            parts.append(f"{images:,}{of} images, {images / elapsed:,.0f} images/s")
        if 0 < done < total:
            parts.append(f"about {elapsed * (total - done) / done:,.0f} s left")
        parts.append(f"{elapsed:,.0f} s in")
        return ", ".join(parts)


_current: Optional[Progress] = None


@contextlib.contextmanager
def track(spark, interval_s: float, job: str) -> Iterator[Optional[Progress]]:
    """Report progress every ``interval_s`` seconds while the block runs (0: not at all)."""
    global _current
    if interval_s <= 0:
        yield None
        return
    reporter = Progress(spark, interval_s, job)
    _current = reporter
    reporter.start()
    try:
        yield reporter
    finally:
        reporter.stop()
        _current = None


# The Spark jobs a stage starts carry its name in this local property (event logs keep it with each job:
# benchmarks/profile_run.py groups by it), and in their description (the Spark UI's job list shows it).
STAGE_PROPERTY = "imgshards.stage"
# Jobs the driver starts for itself in the background (workers.start): no stage's progress.
BACKGROUND_GROUP = "imgshards-background"


@contextlib.contextmanager
def stage(name: str, images: Optional[int] = None) -> Iterator[None]:
    """Name the pipeline stage the block runs (and how many images it expects, when known)."""
    from pyspark import SparkContext

    if _current is not None:
        _current.begin(name, images)
    sc = SparkContext._active_spark_context
    previous = sc.getLocalProperty(STAGE_PROPERTY) if sc is not None else None
    if sc is not None:
        sc.setLocalProperty(STAGE_PROPERTY, name)
        sc.setJobDescription(name)
    try:
        yield
    finally:
        if sc is not None:
            sc.setLocalProperty(STAGE_PROPERTY, previous)
            sc.setJobDescription(previous)


def images_counter():
    """The accumulator that executors add finished images to, or None when progress is off (or the session,
    Spark Connect, has no accumulators)."""
    return _current.counter if _current is not None else None
