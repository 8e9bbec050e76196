"""Job deadline from --deadline, Slurm, PBS walltime + start (fake qstat), or nothing."""

from __future__ import annotations

import os
import time

import pytest

from hpcvision.cluster.walltime import job_deadline, job_start, parse_duration, parse_qstat_start
from hpcvision.errors import UserError

NO_QSTAT = {"PATH": "/nonexistent"}


def test_explicit_deadline_wins():
    env = {**NO_QSTAT, "SLURM_JOB_END_TIME": "2000", "PBS_WALLTIME": "60", "HPCVISION_JOB_START": "10"}
    assert job_deadline("1234.5", env) == 1234.5


def test_explicit_relative_deadline():
    before = time.time()
    assert before + 90 <= job_deadline("+00:01:30", NO_QSTAT) <= time.time() + 90


def test_explicit_iso_deadline():
    assert job_deadline("2030-01-02T03:04:05+00:00", NO_QSTAT) == 1893553445.0


def test_bad_explicit_deadline_is_user_error():
    with pytest.raises(UserError, match="--deadline"):
        job_deadline("tomorrow", NO_QSTAT)


def test_slurm_end_time():
    assert job_deadline(None, {**NO_QSTAT, "SLURM_JOB_END_TIME": "1700000000"}) == 1700000000.0


@pytest.mark.parametrize("walltime, seconds", [("3600", 3600), ("01:30:00", 5400), ("90:00", 5400),
                                               ("1-00:00:10", 86410)])
def test_pbs_walltime_plus_script_start(walltime, seconds):
    env = {**NO_QSTAT, "PBS_JOBID": "1.srv", "PBS_WALLTIME": walltime, "HPCVISION_JOB_START": "1000"}
    assert job_deadline(None, env) == 1000 + seconds


def test_hpcvision_walltime_when_scheduler_sets_none():
    env = {**NO_QSTAT, "HPCVISION_WALLTIME": "00:10:00", "HPCVISION_JOB_START": "500"}
    assert job_deadline(None, env) == 1100


def test_walltime_without_start_is_unknown():
    assert job_deadline(None, {**NO_QSTAT, "PBS_WALLTIME": "3600"}) is None


def test_nothing_known():
    assert job_deadline(None, NO_QSTAT) is None


def test_bad_walltime_is_user_error():
    with pytest.raises(UserError, match="PBS_WALLTIME"):
        job_deadline(None, {**NO_QSTAT, "PBS_WALLTIME": "1h", "HPCVISION_JOB_START": "1"})


@pytest.fixture
def fake_qstat(tmp_path):
    """A qstat on PATH that prints a PBS Pro `qstat -f` with stime = 2026-11-26 05:00:00 local time."""
    exe = tmp_path / "qstat"
    exe.write_text(
        "#!/bin/sh\n"
        'echo "Job Id: $2"\n'
        'echo "    Job_Name = t"\n'
        'echo "    stime = Thu Nov 26 05:00:00 2026"\n'
        'echo "    Resource_List.walltime = 01:00:00"\n'
    )
    exe.chmod(0o755)
    return {"PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin"}


def test_qstat_start_is_used_when_earlier(fake_qstat):
    qstat_start = time.mktime((2026, 11, 26, 5, 0, 0, 0, 0, -1))
    later = str(int(qstat_start) + 40)
    env = {**fake_qstat, "PBS_JOBID": "9.srv", "PBS_WALLTIME": "3600", "HPCVISION_JOB_START": later}
    assert job_deadline(None, env) == qstat_start + 3600


def test_script_start_is_used_when_earlier_than_qstat(fake_qstat):
    env = {**fake_qstat, "PBS_JOBID": "9.srv", "HPCVISION_JOB_START": "1000"}
    assert job_start(env) == 1000


def test_parse_qstat_start_torque_and_missing():
    torque = "Job Id: 5.srv\n    start_time = Wed Jan  7 10:11:12 2026\n"
    assert parse_qstat_start(torque) == time.mktime((2026, 1, 7, 10, 11, 12, 0, 0, -1))
    assert parse_qstat_start("Job Id: 5.srv\n    job_state = Q\n") is None


def test_parse_duration_rejects_garbage():
    with pytest.raises(UserError):
        parse_duration("1:2:3:4")
