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
    with Workers(3) as pool:
        results = pool.map(_square_and_count, 100, [[1, 2], [3], [4, 5, 6]], counted.append)
        pids = pool.map(_pid, None, [0, 1, 2])
    assert results == [[101, 104], [109], [116, 125, 136]]
    assert sum(counted) == 6
    assert len(set(pids)) == 3 and os.getpid() not in pids


def test_a_forked_worker_inherits_its_share_without_pickling(monkeypatch):
    monkeypatch.setattr(workers, "start_method", lambda: "fork")
    unpicklable = [lambda: 7]  # a lambda cannot be pickled: only inheritance gets it there
    with Workers(2) as pool:
        assert pool.map(lambda context, share, _report: context[0]() + share, unpicklable, [1, 2]) == [8, 9]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_workers_user_error_reaches_the_parent_with_its_message(monkeypatch, method):
    monkeypatch.setattr(workers, "start_method", lambda: method)
    with Workers(2) as pool, pytest.raises(UserError, match="share 1: bad input file x.tar"):
        pool.map(_refuse, None, [0, 1])


def test_a_killed_forked_worker_is_one_error_not_a_hang(monkeypatch):
    monkeypatch.setattr(workers, "start_method", lambda: "fork")
    with Workers(2) as pool, pytest.raises(UserError, match=r"worker process died \(exit code -9\)"):
        pool.map(_die, None, [0, 1])


def test_one_worker_runs_here_and_more_shares_than_workers_is_refused():
    with Workers(1) as pool:
        assert pool.map(_pid, None, [0]) == [os.getpid()]
    with Workers(2) as pool, pytest.raises(ValueError, match="3 shares for 2 workers"):
        pool.map(_pid, None, [0, 1, 2])
