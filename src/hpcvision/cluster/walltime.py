"""When must this job stop? The scheduler's end time, so training can checkpoint before it.

Order: `--deadline` > Slurm's SLURM_JOB_END_TIME > start + walltime. PBS sets no end time, only
PBS_WALLTIME (Torque; seconds or HH:MM:SS), so the start is the earliest of `qstat -f $PBS_JOBID`'s
start time and HPCVISION_JOB_START, which every script from `hpcvision job` exports at its top
(with HPCVISION_WALLTIME, for PBS Pro and Slurm versions that set neither variable).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from datetime import datetime

from hpcvision.errors import UserError

QSTAT_TIMEOUT_S = 10
# qstat -f prints local times like "Thu Nov 26 05:00:00 2026" (PBS Pro: stime, Torque: start_time).
QSTAT_TIME_FORMAT = "%a %b %d %H:%M:%S %Y"


def job_deadline(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> float | None:
    """Epoch seconds at which the job is killed, from `--deadline` or the scheduler; None if unknown."""
    env = os.environ if environ is None else environ
    if explicit:
        return _parse_deadline(explicit)
    if env.get("SLURM_JOB_END_TIME", "").isdigit() and int(env["SLURM_JOB_END_TIME"]) > 0:
        return float(env["SLURM_JOB_END_TIME"])
    walltime_text = env.get("PBS_WALLTIME") or env.get("HPCVISION_WALLTIME")
    if not walltime_text:
        return None
    walltime = parse_duration(walltime_text, "PBS_WALLTIME" if env.get("PBS_WALLTIME") else "HPCVISION_WALLTIME")
    start = job_start(env)
    return None if start is None else start + walltime


def parse_duration(text: str, what: str = "walltime") -> int:
    """Seconds from `3600`, `MM:SS`, `HH:MM:SS` or `D-HH:MM:SS` (Slurm's day form)."""
    text = text.strip()
    days = 0
    match = re.fullmatch(r"(\d+)-(.*)", text)
    if match:
        days, text = int(match.group(1)), match.group(2)
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise UserError(f"{what}: cannot read {text!r} (seconds or HH:MM:SS)")
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return days * 86400 + seconds


def job_start(environ: Mapping[str, str] | None = None) -> float | None:
    """Earliest known start of this job: qstat's start time (PBS, when qstat exists) and HPCVISION_JOB_START."""
    env = os.environ if environ is None else environ
    starts = []
    if env.get("HPCVISION_JOB_START", "").strip().isdigit():
        starts.append(float(env["HPCVISION_JOB_START"]))
    if env.get("PBS_JOBID"):
        qstat_start = _qstat_start_time(env["PBS_JOBID"], env)
        if qstat_start is not None:
            starts.append(qstat_start)
    return min(starts) if starts else None


def _qstat_start_time(job_id: str, env: Mapping[str, str]) -> float | None:
    qstat = shutil.which("qstat", path=env.get("PATH"))
    if qstat is None:
        return None
    try:
        result = subprocess.run(
            [qstat, "-f", job_id], capture_output=True, text=True, timeout=QSTAT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_qstat_start(result.stdout) if result.returncode == 0 else None


def parse_qstat_start(text: str) -> float | None:
    """The job's start time from `qstat -f` output (stime or start_time), as epoch seconds."""
    match = re.search(r"^\s*(?:stime|start_time)\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    if match is None:
        return None
    value = match.group(1)
    if value.isdigit():  # some Torque versions print epoch seconds
        return float(value)
    try:
        return time.mktime(time.strptime(value, QSTAT_TIME_FORMAT))
    except ValueError:
        return None


def _parse_deadline(text: str) -> float:
    """Accept epoch seconds, an ISO time, or +HH:MM:SS from now."""
    if text.startswith("+"):
        return time.time() + parse_duration(text[1:], "--deadline")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserError(f"--deadline: cannot read '{text}' (epoch seconds, ISO time, or +HH:MM:SS)") from None
