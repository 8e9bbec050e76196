"""Batch scripts for PBS and Slurm: one per stage, or the four stages as a chain of dependent jobs.

Every value the user typed reaches the script through `shlex.quote` (body) or a strict character
check (`#PBS`/`#SBATCH` lines, which the shell never parses but a newline could break out of).
`--setup` lines are the exception: they are the user's own shell code and are copied verbatim.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hpcvision.cluster.plan import MAX_BASE_PORT
from hpcvision.cluster.walltime import parse_duration
from hpcvision.errors import UserError

if TYPE_CHECKING:  # cluster.config declares the job options from the constants below
    from hpcvision.cluster.config import JobConfig

SCHEDULERS = ("pbs", "slurm")
STAGES = ("extract", "build", "train", "evaluate")
JOB_STAGES = STAGES + ("pipeline",)
LAUNCHERS = ("auto", "srun", "mpirun", "aprun")
# What starts the ranks of each scheduler's jobs ("auto": srun on Slurm, mpirun on PBS).
SCHEDULER_LAUNCHERS = {"pbs": ("auto", "mpirun", "aprun"), "slurm": ("auto", "srun", "mpirun")}
# The hpcvision subcommand that runs each stage.
STAGE_COMMANDS = {"extract": ("data", "extract"), "build": ("data", "build"), "train": ("train",),
                  "evaluate": ("evaluate",)}
# `hpcvision train` exits with this code when it stopped (checkpoint saved) before the walltime with
# epochs/steps still to do. Job scripts made with --resubmit then queue the next part.
EXIT_MORE_TO_DO = 3

JOB_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
# What may appear in a #PBS/#SBATCH value: no spaces, quotes, newlines or shell syntax.
DIRECTIVE_SAFE_RE = re.compile(r"[A-Za-z0-9_./@+,:=~%-]+")
WALLTIME_RE = re.compile(r"\d+:[0-5]\d:[0-5]\d")


@dataclass(frozen=True)
class JobSpec:
    """One batch job: a stage, its own arguments, and the job options (resources, set-up, launcher...)."""

    scheduler: str
    stage: str
    options: JobConfig
    stage_args: list[str] = field(default_factory=list)
    script_path: str | None = None  # absolute path the script is written to (needed by --resubmit)

    @property
    def name(self) -> str:
        return self.options.job_name or f"hpcvision-{self.stage}"

    @property
    def parallel(self) -> bool:
        """Runs on every task of the job (evaluate is one process)."""
        return self.stage != "evaluate"

    @property
    def total_tasks(self) -> int:
        return self.options.nodes * self.options.tasks_per_node if self.parallel else 1


def validate(spec: JobSpec) -> None:
    """Reject values that could break the script or its directives (one-line UserError)."""
    job = spec.options
    if spec.scheduler not in SCHEDULERS:
        raise UserError(f"scheduler {spec.scheduler!r}: choose pbs or slurm")
    if spec.stage not in STAGES:
        raise UserError(f"stage {spec.stage!r}: choose one of {', '.join(JOB_STAGES)}")
    if not JOB_NAME_RE.fullmatch(spec.name):
        raise UserError(
            f"--job-name {spec.name!r}: use a letter then letters, digits, '_', '.', '-' (at most 63)"
        )
    for flag, value, low in (("--nodes", job.nodes, 1), ("--tasks-per-node", job.tasks_per_node, 1),
                             ("--gpus-per-node", job.gpus_per_node, 0), ("--ps", job.ps, 0),
                             ("--max-resubmits", job.max_resubmits, 0)):
        if value < low:
            raise UserError(f"{flag} {value}: must be >= {low}")
    if job.cpus_per_task is not None and job.cpus_per_task < 1:
        raise UserError(f"--cpus-per-task {job.cpus_per_task}: must be >= 1")
    if job.walltime is not None and not WALLTIME_RE.fullmatch(job.walltime):
        raise UserError(f"--walltime {job.walltime!r}: use HH:MM:SS")
    for flag, value in (("--queue/--partition", job.queue), ("--account", job.account),
                        ("--log-dir", job.log_dir)):
        if value is not None and not DIRECTIVE_SAFE_RE.fullmatch(value):
            raise UserError(
                f"{flag} {value!r}: #PBS/#SBATCH lines cannot carry spaces, quotes or shell characters"
            )
    for line in job.setup:
        if "\n" in line or "\r" in line:
            raise UserError(f"--setup {line!r}: one line per --setup (repeat the flag)")
    if job.port is not None and not 1024 <= job.port <= MAX_BASE_PORT:
        raise UserError(f"--port {job.port}: choose 1024..{MAX_BASE_PORT}")
    _validate_stage_options(spec)


def _validate_stage_options(spec: JobSpec) -> None:
    """The options that only some schedulers or stages take."""
    job = spec.options
    launchers = SCHEDULER_LAUNCHERS[spec.scheduler]
    if job.launcher not in launchers:
        raise UserError(f"--launcher {job.launcher}: {spec.scheduler.upper()} jobs start ranks with one of "
                        f"{', '.join(launchers)}")
    if job.resubmit and spec.stage != "train":
        raise UserError("--resubmit: only train jobs can continue in a new job")
    if job.resubmit and not spec.script_path:
        raise UserError("--resubmit: give --out FILE so the job can re-queue its own script")
    if job.ps and spec.stage != "train":
        raise UserError("--ps: parameter servers are for the train stage")


def render(spec: JobSpec) -> str:
    """The batch script for one stage as text."""
    validate(spec)
    lines = ["#!/bin/bash"]
    if any("$" in arg or "`" in arg for arg in spec.stage_args + [spec.script_path or ""]):
        # File-wide (directly after the shebang): the user's `$` and backticks stay literal in quotes.
        lines.append("# shellcheck disable=SC2016")
    lines += _header_comments(spec)
    lines += _pbs_directives(spec) if spec.scheduler == "pbs" else _slurm_directives(spec)
    lines += ["", "set -euo pipefail", ""]
    if spec.scheduler == "pbs":
        lines += ["# PBS starts jobs in $HOME; run where the job was submitted.", 'cd "${PBS_O_WORKDIR:-.}"', ""]
    lines += _environment(spec)
    lines += _setup(spec)
    lines += _run_stage(spec)
    return "\n".join(lines) + "\n"


def _sanitize_comment(text: str) -> str:
    """A comment must stay on one line whatever the user typed."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _header_comments(spec: JobSpec) -> list[str]:
    submit = "qsub" if spec.scheduler == "pbs" else "sbatch"
    where = spec.script_path or "THIS_FILE"
    return [
        f"# hpcvision {spec.stage} stage as a {spec.scheduler.upper()} batch job "
        f"({spec.total_tasks} task(s) on {spec.options.nodes if spec.parallel else 1} node(s)).",
        f"# Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by hpcvision; submit with: "
        f"{submit} {_sanitize_comment(where)}",
    ]


def _pbs_directives(spec: JobSpec) -> list[str]:
    job = spec.options
    tasks = job.tasks_per_node if spec.parallel else 1
    nodes = job.nodes if spec.parallel else 1
    ncpus = tasks * (job.cpus_per_task or 1)
    select = f"select={nodes}:ncpus={ncpus}:mpiprocs={tasks}"
    if job.gpus_per_node:
        select += f":ngpus={job.gpus_per_node}"
    lines = [f"#PBS -N {spec.name}", f"#PBS -l {select}"]
    if job.walltime:
        lines.append(f"#PBS -l walltime={job.walltime}")
    if job.queue:
        lines.append(f"#PBS -q {job.queue}")
    if job.account:
        lines.append(f"#PBS -A {job.account}")
    lines.append("#PBS -j oe")
    if job.log_dir:
        lines.append(f"#PBS -o {job.log_dir.rstrip('/')}/")
    return lines


def _slurm_directives(spec: JobSpec) -> list[str]:
    job = spec.options
    tasks = job.tasks_per_node if spec.parallel else 1
    lines = [
        f"#SBATCH --job-name={spec.name}",
        f"#SBATCH --nodes={job.nodes if spec.parallel else 1}",
        f"#SBATCH --ntasks-per-node={tasks}",
    ]
    if job.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={job.cpus_per_task}")
    if job.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    if job.walltime:
        lines.append(f"#SBATCH --time={job.walltime}")
    if job.queue:
        lines.append(f"#SBATCH --partition={job.queue}")
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    if job.log_dir:
        lines.append(f"#SBATCH --output={job.log_dir.rstrip('/')}/%x-%j.out")
    return lines


def _rank_environment(spec: JobSpec) -> list[tuple[str, str]]:
    """Variables every rank needs; passed through `env` because mpirun does not forward the environment."""
    job = spec.options
    pairs = [("HPCVISION_JOB_START", '"$HPCVISION_JOB_START"')]
    if job.walltime:
        pairs.append(("HPCVISION_WALLTIME", shlex.quote(job.walltime)))
    if job.port is not None:
        pairs.append(("HPCVISION_BASE_PORT", str(job.port)))
    if _launcher(spec) == "aprun":
        pairs.append(("HPCVISION_DISCOVERY", "mpi"))
    return pairs


def _environment(spec: JobSpec) -> list[str]:
    lines = [
        "# Walltime guard (train): checkpoint and stop a margin before start + walltime. PBS sets no",
        "# end time, so record the start here (a re-queued part gets its own start).",
        "HPCVISION_JOB_START=$(date +%s)",
        "export HPCVISION_JOB_START",
    ]
    for name, value in _rank_environment(spec)[1:]:
        lines.append(f"export {name}={value}")
    if _launcher(spec) == "aprun":
        lines.append("# Cray: PBS_NODEFILE names the MOM node, not the compute nodes; ranks ask each other (mpi4py).")
    return lines + [""]


def _setup(spec: JobSpec) -> list[str]:
    lines = []
    if spec.options.setup:
        lines.append("# Environment set-up (--setup lines, copied verbatim; shellcheck cannot see sourced files)")
        for line in spec.options.setup:
            lines += ["# shellcheck disable=SC1090,SC1091", line]
        lines.append("")
    lines += [
        "# Resolve hpcvision once so every node runs the same installation.",
        'HPCVISION=$(command -v hpcvision || true)',
        'if [ -z "$HPCVISION" ]; then',
        '    echo "hpcvision is not on PATH: add --setup \'source /path/to/.venv/bin/activate\'" >&2',
        "    exit 2",
        "fi",
        "",
    ]
    return lines


def _launcher(spec: JobSpec) -> str:
    if not spec.parallel:
        return "none"
    if spec.options.launcher != "auto":
        return spec.options.launcher
    return "srun" if spec.scheduler == "slurm" else "mpirun"


def _launch_prefix(spec: JobSpec) -> list[str]:
    job = spec.options
    launcher = _launcher(spec)
    tasks = str(spec.total_tasks)
    if launcher == "srun":
        prefix = ["srun", "--kill-on-bad-exit=1"]
        if job.cpus_per_task:
            # Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch.
            prefix.append(f"--cpus-per-task={job.cpus_per_task}")
        return prefix
    if launcher == "mpirun":
        nodefile = '"$PBS_NODEFILE"' if spec.scheduler == "pbs" else None
        return ["mpirun", "-np", tasks] + (["-machinefile", nodefile] if nodefile else [])
    if launcher == "aprun":
        prefix = ["aprun", "-n", tasks, "-N", str(job.tasks_per_node)]
        if job.cpus_per_task:
            prefix += ["-d", str(job.cpus_per_task)]
        return prefix
    return []


def _stage_argv(spec: JobSpec) -> list[str]:
    """The hpcvision command (quoted), with the job's own options before the user's so the user's win."""
    job = spec.options
    argv = ['"$HPCVISION"', *STAGE_COMMANDS[spec.stage]]
    if spec.stage == "train":
        if job.ps:
            argv += ["--num-ps", str(job.ps)]
        if job.walltime:
            argv += ["--deadline", '"$((HPCVISION_JOB_START + ' + str(parse_duration(job.walltime)) + '))"']
        if job.resubmit:
            # train exits 0 after an early stop unless told otherwise; the re-queue below keys on this code.
            argv += ["--incomplete-exit-code", str(EXIT_MORE_TO_DO)]
    return argv + [shlex.quote(arg) for arg in spec.stage_args]


def _run_stage(spec: JobSpec) -> list[str]:
    job = spec.options
    launcher = _launcher(spec)
    if launcher == "none":
        comment = f"# {spec.stage}: one process."
    else:
        comment = f"# {spec.stage} on {spec.total_tasks} task(s) via {launcher}; each rank finds its role itself"
        comment += " (see `hpcvision cluster show`)."
    env_words = ["env"] + [f"{name}={value}" for name, value in _rank_environment(spec)]
    words = _launch_prefix(spec) + env_words + _stage_argv(spec)
    command = " \\\n    ".join(_wrap(words))
    if not job.resubmit:
        return [comment, command]
    resubmit = ['"$HPCVISION"', "job", "resubmit", spec.scheduler, shlex.quote(spec.script_path or ""),
                "--max-resubmits", str(job.max_resubmits)]
    return [
        comment,
        "status=0",
        command + " || status=$?",
        f"if [ \"$status\" -eq {EXIT_MORE_TO_DO} ]; then",
        f"    # Exit {EXIT_MORE_TO_DO}: training checkpointed before the walltime with more to do.",
        f"    # Queue the next part (at most {job.max_resubmits}); jobs waiting on this one wait on it.",
        "    " + " ".join(resubmit),
        "    exit $?",
        "fi",
        'exit "$status"',
    ]


def _wrap(words: list[str], width: int = 90) -> list[str]:
    """Group words into continuation lines of about `width` characters."""
    lines, current = [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return lines + [current]


# ---------------------------------------------------------------------------------------------
# Pipeline: four stage scripts plus a driver that submits them as dependent jobs


def split_pipeline_args(args: list[str]) -> dict[str, list[str]]:
    """`extract: A.. build: B.. train: C.. evaluate: D..` -> {stage: args}; every stage must appear."""
    markers = {f"{stage}:": stage for stage in STAGES}
    parts: dict[str, list[str]] = {}
    current = None
    for arg in args:
        if arg in markers:
            current = markers[arg]
            if current in parts:
                raise UserError(f"pipeline: '{arg}' given twice")
            parts[current] = []
        elif current is None:
            raise UserError(
                f"pipeline: argument {arg!r} before a stage marker; use -- extract: ... build: ... "
                "train: ... evaluate: ..."
            )
        else:
            parts[current].append(arg)
    missing = [stage for stage in STAGES if stage not in parts]
    if missing:
        raise UserError(f"pipeline: no arguments for {', '.join(missing)} (add '{missing[0]}: ...' after --)")
    return parts


def stage_script_path(out: Path, stage: str) -> Path:
    """run.pbs -> run-extract.pbs, ..."""
    return out.with_name(f"{out.stem}-{stage}{out.suffix}")


def render_driver(scheduler: str, scripts: dict[str, Path]) -> str:
    """A script that submits the stage scripts in order, each after the previous one succeeded."""
    lines = [
        "#!/bin/bash",
        "# Submits the hpcvision pipeline: extract -> build -> train -> evaluate.",
        "# Each job starts only after the previous one ended successfully (afterok).",
        "set -euo pipefail",
        "",
    ]
    previous = None
    for stage in STAGES:
        path = shlex.quote(str(scripts[stage]))
        if scheduler == "slurm":
            depend = f' --dependency=afterok:"${previous}"' if previous else ""
            lines.append(f"{stage}=$(sbatch --parsable{depend} {path})")
            lines.append(f"{stage}=${{{stage}%%;*}}  # --parsable prints id[;cluster]")
        else:
            depend = f' -W depend=afterok:"${previous}"' if previous else ""
            lines.append(f"{stage}=$(qsub{depend} {path})")
        lines.append(f'echo "{stage}: ${stage}"')
        previous = stage
    return "\n".join(lines) + "\n"
