"""Batch scripts for PBS (Pro or Torque) and Slurm: one per stage, a sweep as one array job, a mixed
CPU+GPU training job, or the four stages as a chain of dependent jobs.

Every value the user typed reaches the script through `shlex.quote` (body) or a strict character
check (`#PBS`/`#SBATCH` lines, which the shell never parses but a newline could break out of).
`--setup` lines are the exception: they are the user's own shell code and are copied verbatim, and
`--directive` lines, which stay comments to the shell whatever they hold (one printable line each).
The body of a mixed job (host lists, the input service) is `cluster.mixed`; a sweep's grid `cluster.sweep`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hpcvision.cluster import mixed
from hpcvision.cluster.plan import MAX_BASE_PORT
from hpcvision.cluster.sweep import ARRAY_INDEX_VARS, SweepPoint, case_lines
from hpcvision.cluster.walltime import parse_duration
from hpcvision.errors import UserError

if TYPE_CHECKING:  # cluster.config declares the job options from the constants below
    from hpcvision.cluster.config import JobConfig

SCHEDULERS = ("pbs", "slurm")
PBS_FLAVORS = ("pro", "torque")
STAGES = ("extract", "build", "train", "evaluate")
JOB_STAGES = STAGES + ("sweep", "pipeline")
LAUNCHERS = ("auto", "srun", "mpirun", "aprun")
# What starts the ranks of each scheduler's jobs ("auto": srun on Slurm, mpirun on PBS).
SCHEDULER_LAUNCHERS = {"pbs": ("auto", "mpirun", "aprun"), "slurm": ("auto", "srun", "mpirun")}
# The hpcvision subcommand that runs each stage (a sweep point is a train run).
STAGE_COMMANDS = {"extract": ("data", "extract"), "build": ("data", "build"), "train": ("train",),
                  "evaluate": ("evaluate",), "sweep": ("train",)}
# train --strategy values that put parameter servers on the CPU nodes of a mixed job when --ps is auto
# ("auto" picks parameter-server as soon as the cluster has ps tasks); the others are all-reduce.
PS_STRATEGIES = ("auto", "parameter-server")
# `hpcvision train` exits with this code when it stopped (checkpoint saved) before the walltime with
# epochs/steps still to do. Job scripts made with --resubmit then queue the next part.
EXIT_MORE_TO_DO = 3

JOB_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
# What may appear in a #PBS/#SBATCH value: no spaces, quotes, newlines or shell syntax.
DIRECTIVE_SAFE_RE = re.compile(r"[A-Za-z0-9_./@+,:=~%-]+")
WALLTIME_RE = re.compile(r"\d+:[0-5]\d:[0-5]\d")


@dataclass(frozen=True)
class JobSpec:
    """One batch job: a stage, its own arguments, and the job options (resources, set-up, launcher...).

    `strategy` and `sweep_root` come from the stage's own options, parsed when the script is written
    (`cluster.stage_options`); `points` are a sweep's grid points (`sweep.expand_grid`).
    """

    scheduler: str
    stage: str
    options: JobConfig
    stage_args: list[str] = field(default_factory=list)
    script_path: str | None = None  # absolute path the script is written to (needed by --resubmit)
    strategy: str = "auto"  # train's --strategy
    points: tuple[SweepPoint, ...] = ()
    sweep_root: str | None = None  # train's --checkpoint-dir: a sweep's run folders go inside it
    data_service: str | None = None  # train's own --data-service

    @property
    def name(self) -> str:
        return self.options.job_name or f"hpcvision-{self.stage}"

    @property
    def parallel(self) -> bool:
        """Runs on every task of the job (evaluate is one process)."""
        return self.stage != "evaluate"

    @property
    def trains(self) -> bool:
        """Runs `hpcvision train` (train, or a sweep's points): the stage the train-only options are for."""
        return STAGE_COMMANDS.get(self.stage) == ("train",)

    @property
    def flavor(self) -> str:
        """PBS Pro or Torque ("pro" for Slurm jobs); only `job pbs` has the option."""
        return getattr(self.options, "flavor", "pro")

    @property
    def mixed(self) -> bool:
        """CPU-only nodes besides the GPU nodes, in one job."""
        return self.options.cpu_nodes > 0 and self.parallel

    @property
    def num_ps(self) -> int:
        """Parameter servers: --ps N, or auto: one per CPU node of a mixed job with a parameter-server strategy."""
        ps = str(self.options.ps)
        if ps != "auto":
            return int(ps) if ps.isdigit() else -1
        training = self.stage == "train" and self.strategy in PS_STRATEGIES
        return self.options.cpu_nodes if self.mixed and training else 0

    @property
    def service(self) -> bool:
        """A mixed all-reduce job: the CPU nodes run the input service (tf.data service), not parameter servers."""
        return self.mixed and self.num_ps == 0

    @property
    def cpu_tasks(self) -> list[int]:
        """Tasks on each CPU node of a mixed job: the parameter servers and the chief, spread as Slurm's block
        distribution does, or one input-service worker per node."""
        if not self.mixed:
            return []
        if self.service:
            return [1] * self.options.cpu_nodes
        total = max(self.num_ps, self.options.cpu_nodes) + 1
        base, extra = divmod(total, self.options.cpu_nodes)
        return [base + (1 if i < extra else 0) for i in range(self.options.cpu_nodes)]

    @property
    def gpu_tasks(self) -> int:
        """Tasks on the --nodes nodes (one for evaluate)."""
        return self.options.nodes * self.options.tasks_per_node if self.parallel else 1

    @property
    def total_tasks(self) -> int:
        """Ranks of the stage's own launch (a mixed job's input service is launched apart)."""
        return self.gpu_tasks + (0 if self.service else sum(self.cpu_tasks))

    @property
    def cores_per_task(self) -> int:
        return self.options.cpus_per_task or 1

    @property
    def cpu_cores_per_task(self) -> int | None:
        """Cores of each process on a CPU node of a mixed job (None: the scheduler's default)."""
        job = self.options
        if job.cpu_node_cores:
            return max(job.cpu_node_cores // max(self.cpu_tasks, default=1), 1)
        if self.service and job.cpus_per_task:
            return job.tasks_per_node * job.cpus_per_task  # a service worker gets a GPU node's share
        return job.cpus_per_task


def validate(spec: JobSpec) -> None:
    """Reject values that could break the script or its directives (one-line UserError)."""
    job = spec.options
    if spec.scheduler not in SCHEDULERS:
        raise UserError(f"scheduler {spec.scheduler!r}: choose pbs or slurm")
    if spec.stage not in STAGES + ("sweep",):
        raise UserError(f"stage {spec.stage!r}: choose one of {', '.join(JOB_STAGES)}")
    if not JOB_NAME_RE.fullmatch(spec.name):
        raise UserError(
            f"--job-name {spec.name!r}: use a letter then letters, digits, '_', '.', '-' (at most 63)"
        )
    for flag, value, low in (("--nodes", job.nodes, 1), ("--tasks-per-node", job.tasks_per_node, 1),
                             ("--gpus-per-node", job.gpus_per_node, 0), ("--cpu-nodes", job.cpu_nodes, 0),
                             ("--max-resubmits", job.max_resubmits, 0)):
        if value < low:
            raise UserError(f"{flag} {value}: must be >= {low}")
    for flag, number in (("--cpus-per-task", job.cpus_per_task), ("--cpu-node-cores", job.cpu_node_cores)):
        if number is not None and number < 1:
            raise UserError(f"{flag} {number}: must be >= 1")
    if job.walltime is not None and not WALLTIME_RE.fullmatch(job.walltime):
        raise UserError(f"--walltime {job.walltime!r}: use HH:MM:SS")
    for flag, value in (("--queue/--partition", job.queue), ("--cpu-queue", job.cpu_queue),
                        ("--account", job.account), ("--log-dir", job.log_dir)):
        if value is not None and not DIRECTIVE_SAFE_RE.fullmatch(value):
            raise UserError(
                f"{flag} {value!r}: #PBS/#SBATCH lines cannot carry spaces, quotes or shell characters"
            )
    for line in job.setup:
        if "\n" in line or "\r" in line:
            raise UserError(f"--setup {line!r}: one line per --setup (repeat the flag)")
    for line in job.directive:
        if not line.isprintable() or not _directive_text(spec.scheduler, line).startswith("-"):
            raise UserError(f"--directive {line!r}: one line of {_directive_prefix(spec.scheduler)} options, "
                            f"e.g. {'-l mem=64gb' if spec.scheduler == 'pbs' else '--mem=64G'}")
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
        raise UserError("--resubmit: only train jobs can continue in a new job (a sweep: submit the same script "
                        "again; each point resumes from its checkpoints)")
    if job.resubmit and not spec.script_path:
        raise UserError("--resubmit: give --out FILE so the job can re-queue its own script")
    if spec.num_ps < 0:
        raise UserError(f"--ps {job.ps!r}: give a number of parameter servers or auto")
    if spec.num_ps and not spec.trains:
        raise UserError("--ps: parameter servers are for the train stage")
    if spec.num_ps and spec.strategy not in PS_STRATEGIES:
        raise UserError(f"--ps {spec.num_ps} with train's --strategy {spec.strategy}: parameter servers need "
                        "--strategy parameter-server (or auto)")
    if spec.strategy == "parameter-server" and spec.trains and not spec.num_ps:
        raise UserError("train's --strategy parameter-server: give the job --ps N (or --cpu-nodes C, one per node)")
    if job.grid and spec.stage != "sweep":
        raise UserError("--grid: only for `job pbs|slurm sweep`")
    if spec.stage == "sweep" and len(spec.points) < 2:
        raise UserError("sweep: give --grid KEY=V1,V2 with at least 2 points in all (one run: use `job ... train`)")
    if spec.stage == "sweep" and not spec.sweep_root:
        raise UserError("sweep: give train's --checkpoint-dir after `--`; each point's run folder goes inside it")
    _validate_mixed(spec)


def _validate_mixed(spec: JobSpec) -> None:
    """A job with CPU nodes and GPU nodes: what it can run and how its ranks start."""
    job = spec.options
    if job.cpu_queue and not (spec.mixed and spec.scheduler == "slurm"):
        raise UserError("--cpu-queue: the partition of a Slurm mixed job's CPU nodes (give --cpu-nodes)")
    if job.cpu_node_cores and not spec.mixed:
        raise UserError("--cpu-node-cores: the cores of a mixed job's CPU nodes (give --cpu-nodes)")
    if not job.cpu_nodes:
        if spec.data_service == "auto":
            raise UserError("train's --data-service auto: finds the input service of a mixed job (--cpu-nodes C and "
                            "train --strategy multi-worker); give HOST:PORT of a service running elsewhere")
        return
    if spec.stage != "train":
        raise UserError(f"--cpu-nodes: CPU nodes serve a train job (parameter servers or the input service), "
                        f"not {spec.stage}" + (" (a sweep runs on one kind of node)" if spec.stage == "sweep" else ""))
    if not job.gpus_per_node:
        raise UserError("--cpu-nodes: the --nodes GPU nodes need --gpus-per-node")
    launcher = _launcher(spec)
    if launcher != ("srun" if spec.scheduler == "slurm" else "mpirun"):
        raise UserError(f"--cpu-nodes: {spec.scheduler.upper()} mixed jobs start ranks with "
                        f"{'srun (a heterogeneous job)' if spec.scheduler == 'slurm' else 'mpirun'}")
    if spec.data_service:
        raise UserError("train's --data-service in a mixed job: " + (
            "the job starts the input service and points the trainers at it itself" if spec.service else
            "a parameter-server job runs no input service (train --strategy multi-worker makes the CPU nodes "
            "run one)"))
    if spec.num_ps and spec.num_ps < job.cpu_nodes:
        raise UserError(f"--ps {spec.num_ps} with --cpu-nodes {job.cpu_nodes}: each CPU node runs at least one "
                        "parameter server (leave --ps auto: one per CPU node)")


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
    kind = f"{spec.scheduler.upper()}{' (Torque)' if spec.flavor == 'torque' else ''} batch job"
    if spec.stage == "sweep":
        kind = f"{kind} array of {len(spec.points)} runs, each"
    nodes = spec.options.nodes if spec.parallel else 1
    where_runs = f"{spec.total_tasks} task(s) on {nodes} node(s)"
    if spec.mixed:
        cpu = spec.options.cpu_nodes
        where_runs = (f"{spec.gpu_tasks} trainer task(s) on {nodes} GPU node(s), the input service on {cpu} CPU "
                      f"node(s)" if spec.service else
                      f"{spec.total_tasks} task(s): {spec.num_ps} parameter server(s) and the chief on {cpu} CPU "
                      f"node(s), {spec.gpu_tasks} worker(s) on {nodes} GPU node(s)")
    return [
        f"# hpcvision {spec.stage} as a {kind} ({where_runs}).",
        f"# Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by hpcvision; submit with: "
        f"{submit} {_sanitize_comment(where)}",
    ]


def _directive_prefix(scheduler: str) -> str:
    return "#PBS" if scheduler == "pbs" else "#SBATCH"


def _directive_text(scheduler: str, line: str) -> str:
    """A --directive's options, without the `#PBS`/`#SBATCH` the user may have typed."""
    text = line.strip()
    prefix = _directive_prefix(scheduler)
    return text[len(prefix):].strip() if text.startswith(prefix + " ") else text


def _user_directives(spec: JobSpec) -> list[str]:
    prefix = _directive_prefix(spec.scheduler)
    return [f"{prefix} {_directive_text(spec.scheduler, line)}" for line in spec.options.directive]


def _chunks(spec: JobSpec) -> list[tuple[int, int, int, int]]:
    """(nodes, tasks per node, GPUs per node, cores per node) of each kind of node: CPU nodes grouped by their
    task count, then the GPU nodes."""
    job = spec.options
    chunks: list[tuple[int, int, int, int]] = []
    for tasks in spec.cpu_tasks:
        cores = job.cpu_node_cores or tasks * (spec.cpu_cores_per_task or 1)
        if chunks and chunks[-1][1] == tasks:
            chunks[-1] = (chunks[-1][0] + 1, tasks, 0, cores)
        else:
            chunks.append((1, tasks, 0, cores))
    tasks = job.tasks_per_node if spec.parallel else 1
    return chunks + [(job.nodes if spec.parallel else 1, tasks, job.gpus_per_node, tasks * spec.cores_per_task)]


def _pbs_resources(spec: JobSpec) -> str:
    """PBS Pro `select=N:ncpus=..:mpiprocs=T[:ngpus=G]+...`; Torque `nodes=N:ppn=P[:gpus=G]+...` (ppn: cores).

    PBS lists a job's hosts in the order of these chunks (CPU nodes first), which a mixed job's script relies on.
    """
    if spec.flavor == "torque":
        return "nodes=" + "+".join(f"{n}:ppn={c}" + (f":gpus={g}" if g else "") for n, _, g, c in _chunks(spec))
    return "select=" + "+".join(f"{n}:ncpus={c}:mpiprocs={t}" + (f":ngpus={g}" if g else "")
                                for n, t, g, c in _chunks(spec))


def _pbs_directives(spec: JobSpec) -> list[str]:
    job = spec.options
    lines = [f"#PBS -N {spec.name}", f"#PBS -l {_pbs_resources(spec)}"]
    if spec.stage == "sweep":
        # PBS Pro: -J (index in PBS_ARRAY_INDEX); Torque: -t (PBS_ARRAYID).
        lines.append(f"#PBS {'-t' if spec.flavor == 'torque' else '-J'} 0-{len(spec.points) - 1}")
    if job.walltime:
        lines.append(f"#PBS -l walltime={job.walltime}")
    if job.queue:
        lines.append(f"#PBS -q {job.queue}")
    if job.account:
        lines.append(f"#PBS -A {job.account}")
    lines.append("#PBS -j oe")
    if job.log_dir:
        lines.append(f"#PBS -o {job.log_dir.rstrip('/')}/")
    return lines + _user_directives(spec)


def _slurm_directives(spec: JobSpec) -> list[str]:
    job = spec.options
    lines = [f"#SBATCH --job-name={spec.name}"]
    if spec.stage == "sweep":
        lines.append(f"#SBATCH --array=0-{len(spec.points) - 1}")
    if job.walltime:
        lines.append(f"#SBATCH --time={job.walltime}")
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    if job.log_dir:
        name = "%x-%A_%a.out" if spec.stage == "sweep" else "%x-%j.out"
        lines.append(f"#SBATCH --output={job.log_dir.rstrip('/')}/{name}")
    lines += _user_directives(spec)
    nodes, tasks, gpus, _ = _chunks(spec)[-1]
    gpu_part = _slurm_component(nodes, f"--ntasks-per-node={tasks}", job.cpus_per_task, gpus, job.queue)
    if not spec.mixed:
        return lines + gpu_part
    # A heterogeneous job: the lines above are the whole job's (Slurm carries account, time, job name, mail,
    # qos... to every component); each component has its own nodes, tasks, cores and partition.
    cpu_count = "--ntasks-per-node=1" if spec.service else f"--ntasks={sum(spec.cpu_tasks)}"
    what = "the input service" if spec.service else "parameter servers and the chief"
    return lines + [
        f"# Component 0: CPU nodes ({what}).",
        *_slurm_component(job.cpu_nodes, cpu_count, spec.cpu_cores_per_task, 0, job.cpu_queue or job.queue),
        "#SBATCH hetjob",
        f"# Component 1: GPU nodes ({'trainers' if spec.service else 'workers'}).",
        *gpu_part,
    ]


def _slurm_component(nodes: int, tasks: str, cpus: int | None, gpus: int, partition: str | None) -> list[str]:
    lines = [f"#SBATCH --nodes={nodes}", f"#SBATCH {tasks}"]
    if cpus:
        lines.append(f"#SBATCH --cpus-per-task={cpus}")
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    return lines


def _rank_environment(spec: JobSpec) -> list[tuple[str, str]]:
    """Variables every rank needs; passed through `env` because mpirun does not forward the environment."""
    job = spec.options
    pairs = [("HPCVISION_JOB_START", '"$HPCVISION_JOB_START"')]
    if job.walltime:
        pairs.append(("HPCVISION_WALLTIME", shlex.quote(job.walltime)))
    if spec.mixed:
        pairs += mixed.rank_environment(spec)
    elif job.port is not None:
        pairs.append(("HPCVISION_BASE_PORT", str(job.port)))
    if _launcher(spec) == "aprun":
        pairs.append(("HPCVISION_DISCOVERY", "mpi"))
    if _launcher(spec) == "mpirun" and spec.flavor == "torque" and not spec.mixed:
        # Torque's node file lists a host once per core: tell discovery how mpirun spread the ranks.
        pairs.append(("HPCVISION_TASKS_PER_NODE", str(job.tasks_per_node)))
    return pairs


def _environment(spec: JobSpec) -> list[str]:
    lines = [
        "# Walltime guard (train): checkpoint and stop a margin before start + walltime. PBS sets no",
        "# end time, so record the start here (a re-queued part gets its own start).",
        "HPCVISION_JOB_START=$(date +%s)",
        "export HPCVISION_JOB_START",
    ]
    set_below = {name for name, _ in mixed.rank_environment(spec)} if spec.mixed else set()
    for name, value in _rank_environment(spec)[1:]:
        if name not in set_below:  # a mixed job's own are worked out further down, once its hosts are known
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


def _one_gpu_per_task(spec: JobSpec) -> bool:
    job = spec.options
    return job.gpus_per_node > 1 and job.tasks_per_node == job.gpus_per_node


def srun_options(spec: JobSpec, cpus: int | None, gpus: bool) -> list[str]:
    """srun's per-step options: cores per task (Slurm >= 22.05 no longer passes sbatch's to srun), and one GPU
    per task when a node runs as many tasks as it has GPUs."""
    words = [f"--cpus-per-task={cpus}"] if cpus else []
    if gpus and _one_gpu_per_task(spec):
        # Without it Slurm gives every task of a node all its GPUs (discovery would split them by local rank).
        words.append("--gpu-bind=single:1")
    return words


def _launch_prefix(spec: JobSpec) -> list[str]:
    job = spec.options
    launcher = _launcher(spec)
    tasks = str(spec.total_tasks)
    if launcher == "srun":
        return ["srun", "--kill-on-bad-exit=1", *srun_options(spec, job.cpus_per_task, gpus=True)]
    if launcher == "mpirun":
        if spec.scheduler != "pbs":
            return ["mpirun", "-np", tasks]
        mapping = []
        if spec.flavor == "torque":
            # Open MPI syntax (MPICH/Intel MPI: -ppn T). Torque's node file lists a host once per core.
            pe = f":PE={job.cpus_per_task}" if job.cpus_per_task else ""
            mapping = ["--map-by", f"ppr:{job.tasks_per_node}:node{pe}"]
        return ["mpirun", "-np", tasks, *mapping, "-machinefile", '"$PBS_NODEFILE"']
    if launcher == "aprun":
        prefix = ["aprun", "-n", tasks, "-N", str(job.tasks_per_node)]
        if job.cpus_per_task:
            prefix += ["-d", str(job.cpus_per_task)]
        return prefix
    return []


def _stage_argv(spec: JobSpec) -> list[str]:
    """The hpcvision command (quoted), with the job's own options before the user's so the user's win
    (a sweep point's options come last: they are what differs from point to point)."""
    job = spec.options
    argv = ['"$HPCVISION"', *STAGE_COMMANDS[spec.stage]]
    if spec.trains:
        if spec.num_ps:
            argv += ["--num-ps", str(spec.num_ps)]
        if job.walltime:
            argv += ["--deadline", '"$((HPCVISION_JOB_START + ' + str(parse_duration(job.walltime)) + '))"']
        if job.resubmit:
            # train exits 0 after an early stop unless told otherwise; the re-queue below keys on this code.
            argv += ["--incomplete-exit-code", str(EXIT_MORE_TO_DO)]
        if spec.service:
            argv += ["--data-service", "auto"]
    argv += [shlex.quote(arg) for arg in spec.stage_args]
    return argv + (['"${point[@]}"'] if spec.stage == "sweep" else [])


def _launch_words(spec: JobSpec) -> list[str]:
    """Launcher, environment and command."""
    command = ["env"] + [f"{name}={value}" for name, value in _rank_environment(spec)] + _stage_argv(spec)
    if spec.mixed:
        return mixed.trainer_launch(spec, command)
    return _launch_prefix(spec) + command


def _run_stage(spec: JobSpec) -> list[str]:
    job = spec.options
    launcher = _launcher(spec)
    lines = []
    if spec.stage == "sweep":
        lines += case_lines(spec.points, ARRAY_INDEX_VARS["slurm" if spec.scheduler == "slurm" else spec.flavor],
                            spec.sweep_root or ".")
    if spec.mixed:
        lines += mixed.prelude(spec)
    if launcher == "none":
        comment = f"# {spec.stage}: one process."
    else:
        comment = f"# {spec.stage} on {spec.total_tasks} task(s) via {launcher}; each rank finds its role itself"
        comment += " (see `hpcvision cluster show`)."
    command = " \\\n    ".join(wrap_words(_launch_words(spec)))
    if not job.resubmit:
        return lines + [comment, command]
    resubmit = ['"$HPCVISION"', "job", "resubmit", spec.scheduler, shlex.quote(spec.script_path or ""),
                "--max-resubmits", str(job.max_resubmits)]
    return lines + [
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


def wrap_words(words: list[str], width: int = 90) -> list[str]:
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
