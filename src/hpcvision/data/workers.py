"""Worker processes of the data stages: each runs one share of the work, handed everything it needs.

`Workers(count).map(work, context, shares, report)` calls `work(context, share, progress)` once per
share, each in its own process. The context (opened archives, the label map) and the share travel as
arguments, so a process opens each archive once and keeps its caches for its whole share, and no
module state carries anything into it. `progress(n)` counts come back to `report` in this process.
With one worker everything runs here, in order.

Forked workers (Linux, no threads, no TensorFlow: `start_method`) inherit the context and their share
as they are in memory: nothing is pickled on the way in, which at ImageNet's 1.28 M list entries is
seconds of the parent's time while the workers wait. Spawned workers get them pickled (the archives'
sources drop their caches on the way, see `NestedTarSource.__getstate__`). Either way one process per
share, watched by the parent: a worker that dies without a word (killed, out of memory) is one error line.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hpcvision.errors import UserError

C = TypeVar("C")
S = TypeVar("S")
R = TypeVar("R")
Report = Callable[[int], None]
# How often the parent looks for a worker that died without a word (killed, out of memory).
POLL_S = 0.2


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


def _ignore(_count: int) -> None:
    pass


class Workers:
    """Up to `count` processes (forked or spawned, `start_method()`), one per share; 1: this process."""

    def __init__(self, count: int):
        self.count = count
        self._method = start_method() if count > 1 else ""

    def map(self, work: Callable[[C, S, Report], R], context: C, shares: Sequence[S],
            report: Report = _ignore) -> list[R]:
        """`[work(context, share, progress) for share in shares]`, in parallel; progress(n) reaches `report`."""
        if len(shares) > self.count:
            raise ValueError(f"{len(shares)} shares for {self.count} workers: give each worker one share")
        if not self._method:
            return [work(context, share, report) for share in shares]
        return _process_map(self._method, work, context, shares, report)


def _process_map(method: str, work: Callable[[C, S, Report], R], context: C, shares: Sequence[S],
                 report: Report) -> list[R]:
    """One process per share (forked: inherits `context` and its share; spawned: gets them pickled);
    results come back pickled, in share order."""
    processes_of = multiprocessing.get_context(method)
    messages = processes_of.Queue()
    processes = [processes_of.Process(target=_run_share, args=(work, context, share, messages, number), daemon=True)
                 for number, share in enumerate(shares)]
    for process in processes:
        process.start()
    try:
        results = _collect(messages, processes, report)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    return [results[number] for number in range(len(shares))]


def _run_share(work: Callable, context: Any, share: Any, messages: Any, number: int) -> None:
    """The body of one worker: its share's result (or error) and its progress go to `messages`."""
    # a writer loads TensorFlow only when the crc32c package is missing; its start-up log is noise here
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        result = work(context, share, lambda count: messages.put(("progress", number, count)))
    except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
        messages.put(("error", number, _picklable(exc)))
    else:
        messages.put(("result", number, result))


def _picklable(exc: BaseException) -> BaseException:
    """The error itself when it pickles (a UserError keeps its one-line message), else a summary of it."""
    import pickle

    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure: send what it said
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _collect(messages: Any, processes: list, report: Report) -> dict[int, Any]:
    """Every share's result by number, relaying progress; a worker's error is raised here."""
    results: dict[int, Any] = {}
    while len(results) < len(processes):
        try:
            kind, number, payload = messages.get(timeout=POLL_S)
        except queue.Empty:
            dead = [p for n, p in enumerate(processes) if n not in results and p.exitcode is not None]
            if dead and messages.empty():
                raise UserError(f"a worker process died (exit code {dead[0].exitcode}) before finishing its share") from None
            continue
        if kind == "progress":
            report(payload)
        elif kind == "error":
            raise payload
        else:
            results[number] = payload
    return results
