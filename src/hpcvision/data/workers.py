"""Worker processes of the data stages: each runs one share of the work, handed everything it needs.

`Workers.map(work, context, shares, report)` calls `work(context, share, progress)` once per share,
each in its own process. The context (opened archives, the label map) and the share travel as
arguments, so a process opens each archive once and keeps its caches for its whole share, and no
module state carries anything into it. `progress(n)` counts come back to `report` in this process
through a queue the pool's manager serves. With one worker everything runs here, in order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

C = TypeVar("C")
S = TypeVar("S")
R = TypeVar("R")
Report = Callable[[int], None]


def start_method() -> str:
    """"fork" when this process is single-threaded and has no TensorFlow loaded, else "spawn".

    Forked workers start in milliseconds with everything imported; a spawned one takes ~0.5-1 s,
    as long as a few thousand records take to write. Forking a multi-threaded process (TensorFlow's
    thread pools, e.g. in a test run) can deadlock the child, so then spawn is used.
    """
    # tqdm's monitor thread only sleeps and never runs in the children, which report through a queue
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.name != "tqdm_monitor"]
    if sys.platform == "linux" and not others and "tensorflow" not in sys.modules:
        return "fork"
    return "spawn"


def _quiet_tensorflow() -> None:
    # a writer loads TensorFlow only when the crc32c package is missing; its start-up log is noise here
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _ignore(_count: int) -> None:
    pass


class Workers:
    """`count` processes (started the `start_method()` way) as a context manager; 1: this process."""

    def __init__(self, count: int):
        self.count = count
        self._stack = contextlib.ExitStack()
        self._pool: Any = None
        self._manager: Any = None

    def __enter__(self) -> Workers:
        if self.count > 1:
            context = multiprocessing.get_context(start_method())
            # the manager first: it is forked before the pool starts its handler threads
            self._manager = self._stack.enter_context(context.Manager())
            self._pool = self._stack.enter_context(context.Pool(self.count, initializer=_quiet_tensorflow))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def map(self, work: Callable[[C, S, Report], R], context: C, shares: Sequence[S],
            report: Report = _ignore) -> list[R]:
        """`[work(context, share, progress) for share in shares]`, in parallel; progress(n) reaches `report`."""
        if self._pool is None:
            return [work(context, share, report) for share in shares]
        progress = self._manager.Queue()
        results = [self._pool.apply_async(work, (context, share, progress.put)) for share in shares]
        while not all(r.ready() for r in results):
            _drain(progress, report, timeout=0.2)
        _drain(progress, report, timeout=0)
        return [r.get() for r in results]  # re-raises a worker's error (a UserError keeps its one-line message)


def _drain(progress, report: Report, timeout: float) -> None:
    try:
        report(progress.get(timeout=timeout) if timeout else progress.get_nowait())
        while True:
            report(progress.get_nowait())
    except queue.Empty:
        pass
