"""When must this job stop? The scheduler's end time, so training can checkpoint before it."""

from __future__ import annotations

import os
import time
from datetime import datetime

from hpcvision.errors import UserError


def job_deadline(explicit: str | None = None, environ: dict[str, str] | None = None) -> float | None:
    """Epoch seconds at which the job is killed, from `--deadline` or the scheduler; None if unknown."""
    env = os.environ if environ is None else environ
    if explicit:
        return _parse_deadline(explicit)
    if env.get("SLURM_JOB_END_TIME", "").isdigit():
        return float(env["SLURM_JOB_END_TIME"])
    return None


def _parse_deadline(text: str) -> float:
    """Accept epoch seconds, an ISO time, or +HH:MM:SS from now."""
    if text.startswith("+"):
        parts = [int(p) for p in text[1:].split(":")]
        seconds = 0
        for part in parts:
            seconds = seconds * 60 + part
        return time.time() + seconds
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserError(f"--deadline: cannot read '{text}' (epoch seconds, ISO time, or +HH:MM:SS)") from None
