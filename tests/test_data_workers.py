"""The data stages' worker processes: forked ones inherit their share, report progress, and fail loudly."""

from __future__ import annotations

import os
import signal

import pytest

from hpcvision.data import workers
from hpcvision.data.workers import Workers
from hpcvision.errors import UserError


def _square_and_count(offset: int, share: list[int], report) -> list[int]:
    for _ in share:
        report(1)
    return [offset + x * x for x in share]


def _pid(_context: None, _share: int, _report) -> int:
    return os.getpid()


def _refuse(_context: None, share: int, _report) -> None:
    if share == 1:
        raise UserError("share 1: bad input file x.tar")


def _die(_context: None, share: int, _report) -> None:
    if share == 1:
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_each_share_runs_in_its_own_process_and_results_come_back_in_share_order(monkeypatch, method):
    monkeypatch.setattr(workers, "start_method", lambda: method)
    counted = []
    pool = Workers(3)
    results = pool.map(_square_and_count, 100, [[1, 2], [3], [4, 5, 6]], counted.append)
    pids = pool.map(_pid, None, [0, 1, 2])
    assert results == [[101, 104], [109], [116, 125, 136]]
    assert sum(counted) == 6
    assert len(set(pids)) == 3 and os.getpid() not in pids


def test_a_forked_worker_inherits_its_share_without_pickling(monkeypatch):
    monkeypatch.setattr(workers, "start_method", lambda: "fork")
    unpicklable = [lambda: 7]  # a lambda cannot be pickled: only inheritance gets it there
    assert Workers(2).map(lambda context, share, _report: context[0]() + share, unpicklable, [1, 2]) == [8, 9]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_workers_user_error_reaches_the_parent_with_its_message(monkeypatch, method):
    monkeypatch.setattr(workers, "start_method", lambda: method)
    with pytest.raises(UserError, match="share 1: bad input file x.tar"):
        Workers(2).map(_refuse, None, [0, 1])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_killed_worker_is_one_error_not_a_hang(monkeypatch, method):
    monkeypatch.setattr(workers, "start_method", lambda: method)
    with pytest.raises(UserError, match=r"worker process died \(exit code -9\)"):
        Workers(2).map(_die, None, [0, 1])


def test_one_worker_runs_here_and_more_shares_than_workers_is_refused():
    assert Workers(1).map(_pid, None, [0]) == [os.getpid()]
    with pytest.raises(ValueError, match="3 shares for 2 workers"):
        Workers(2).map(_pid, None, [0, 1, 2])
