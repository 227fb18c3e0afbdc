"""Driver work run beside a stage, in a thread whose Spark jobs carry their own stage name.

On two cores, a stage's driver-only time (planning, Delta's log work, py4j) leaves a core idle; work that
needs nothing from the stage's own steps fills it: the Python workers' start while ingest lists its files,
ingest opening its tables while the executors probe, export's channel statistics while it writes the
splits, and the pipeline's report gathering its table sections while export runs.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from pyspark import InheritableThread, SparkContext

from imgshards.observe import progress

log = logging.getLogger(__name__)


class Background:
    """``call(*args)`` started now in an InheritableThread (the caller's Spark job properties, then
    ``stage`` as the jobs' stage name and description, in progress.BACKGROUND_GROUP so that the running
    stage's progress line does not count its tasks). :meth:`result` waits and returns what it returned or
    raises what it raised; :meth:`wait` waits and leaves an error for the caller's own later work to find."""

    def __init__(self, stage: str, call: Callable[..., Any], *args: Any):
        self._call, self._args, self._stage = call, args, stage
        self._value: Any = None
        self._error: Optional[BaseException] = None
        # A classic session's job properties go with the thread; a Spark Connect session (no SparkContext)
        # has none to carry.
        thread = InheritableThread if SparkContext._active_spark_context is not None else threading.Thread
        self._thread = thread(target=self._run, name=f"imgshards-{stage}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sc = SparkContext._active_spark_context
        if sc is not None:
            sc.setLocalProperty(progress.STAGE_PROPERTY, self._stage)
            sc.setJobGroup(progress.BACKGROUND_GROUP, self._stage)
        try:
            self._value = self._call(*self._args)
        except BaseException as e:
            self._error = e

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            log.debug("background %s failed: %s", getattr(self._call, "__name__", self._call), self._error)
