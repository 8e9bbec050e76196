"""Talking to the scheduler: submit a script (qsub/sbatch, found on PATH), chain dependencies, and
let a training job queue its own continuation while the jobs that wait on it keep waiting."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from hpcvision.cluster.jobscript import EXIT_MORE_TO_DO
from hpcvision.errors import UserError

SUBMIT_TIMEOUT_S = 120
RESUBMIT_COUNT_VAR = "HPCVISION_RESUBMIT_COUNT"


def _run(argv: list[str], what: str) -> str:
    exe = shutil.which(argv[0])
    if exe is None:
        raise UserError(f"{argv[0]}: not found on PATH (are you on the cluster's login node?)")
    try:
        result = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: {argv[0]} did not answer in {SUBMIT_TIMEOUT_S} s") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"{what}: {argv[0]} failed ({message[-1] if message else f'exit {result.returncode}'})")
    return result.stdout


def submit(scheduler: str, script: Path, after: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Submit `script`; start it only after job `after` succeeded; `env` extra variables. Returns the job id."""
    variables = dict(env or {})
    if scheduler == "slurm":
        argv = ["sbatch", "--parsable"]
        if after:
            argv.append(f"--dependency=afterok:{after}")
        if variables:
            argv.append("--export=" + ",".join(["ALL"] + [f"{k}={v}" for k, v in variables.items()]))
    else:
        argv = ["qsub"]
        if after:
            argv += ["-W", f"depend=afterok:{after}"]
        if variables:
            argv += ["-v", ",".join(f"{k}={v}" for k, v in variables.items())]
    out = _run([*argv, str(script)], f"{script}")
    job_id = parse_job_id(scheduler, out)
    if not job_id:
        raise UserError(f"{script}: could not read a job id from {argv[0]}'s answer {out.strip()!r}")
    return job_id


def parse_job_id(scheduler: str, output: str) -> str:
    """sbatch --parsable: `123` or `123;cluster`; qsub: `123.server` (last non-empty line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    if scheduler == "slurm":
        last = last.split(";")[0]
        match = re.search(r"(\d+)$", last)  # also "Submitted batch job 123"
        return match.group(1) if match else ""
    return last if re.fullmatch(r"[\w.\[\]@-]+", last) else ""


def submit_chain(scheduler: str, scripts: list[tuple[str, Path]]) -> list[tuple[str, str]]:
    """Submit scripts in order, each depending (afterok) on the previous; [(stage, job id)]."""
    ids, previous = [], None
    for stage, script in scripts:
        previous = submit(scheduler, script, after=previous)
        ids.append((stage, previous))
    return ids


def resubmit(scheduler: str, script: Path, max_resubmits: int, environ: Mapping[str, str] | None = None) -> int:
    """Queue the next part of a training job; jobs that waited on this one now wait on the new one.

    Returns 0 after queueing, EXIT_MORE_TO_DO when --max-resubmits is reached (the job then fails, so
    its dependents do not start on an unfinished model).
    """
    env = os.environ if environ is None else environ
    count_text = env.get(RESUBMIT_COUNT_VAR, "0") or "0"
    if not count_text.isdigit():
        raise UserError(f"{RESUBMIT_COUNT_VAR}={count_text!r}: not a count")
    count = int(count_text)
    if count >= max_resubmits:
        print(f"hpcvision: training is not complete after {count} re-submission(s) (--max-resubmits "
              f"{max_resubmits}); resume by submitting {script} again")
        return EXIT_MORE_TO_DO
    if not script.is_file():
        raise UserError(f"{script}: job script not found; cannot re-queue")
    new_id = submit(scheduler, script, env={RESUBMIT_COUNT_VAR: str(count + 1)})
    print(f"hpcvision: queued part {count + 2} of the training as job {new_id}")
    current = env.get("SLURM_JOB_ID") if scheduler == "slurm" else env.get("PBS_JOBID")
    if current:
        for dependent in move_dependents(scheduler, current, new_id):
            print(f"hpcvision: job {dependent} now waits for {new_id}")
    return 0


def move_dependents(scheduler: str, current: str, new_id: str) -> list[str]:
    """Make every job waiting (afterok) on `current` wait on `new_id` instead."""
    moved = []
    if scheduler == "slurm":
        listing = _run(["squeue", "--noheader", "--format=%i|%E"], "squeue")
        for line in listing.splitlines():
            job, _, dependency = line.strip().partition("|")
            if re.search(rf"afterok:{re.escape(current)}(?!\d)", dependency):
                _run(["scontrol", "update", f"JobId={job}", f"Dependency=afterok:{new_id}"], "scontrol")
                moved.append(job)
    else:
        for job in pbs_dependents(_run(["qstat", "-f", current], "qstat")):
            _run(["qalter", "-W", f"depend=afterok:{new_id}", job], "qalter")
            moved.append(job)
    return moved


def pbs_dependents(qstat_f: str) -> list[str]:
    """Job ids in `depend = beforeok:124.srv@srv:125.srv@srv` of `qstat -f` (long lines wrap with a tab)."""
    text = re.sub(r"\n\t", "", qstat_f)
    match = re.search(r"^\s*depend\s*=\s*(.+)$", text, re.MULTILINE)
    if match is None:
        return []
    jobs = []
    for clause in match.group(1).split(","):
        kind, _, rest = clause.strip().partition(":")
        if kind == "beforeok":
            jobs.extend(item.split("@")[0] for item in rest.split(":") if item)
    return jobs
