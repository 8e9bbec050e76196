"""`ShowConfig`, `JobConfig` (one per scheduler), `ResubmitConfig`: the options of `cluster show`,
`job pbs|slurm STAGE` and `job resubmit`, declared once.

Their `--flags` are derived from the fields (`hpcvision.config.add_config_arguments`). A scheduler's
own options (its launchers today) live in its `JobConfig` subclass, listed in `JOB_CONFIGS`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcvision.cluster.discovery import SOURCES
from hpcvision.cluster.jobscript import (
    EXIT_MORE_TO_DO,
    LAUNCHERS,
    PBS_FLAVORS,
    SCHEDULER_LAUNCHERS,
    SCHEDULERS,
)
from hpcvision.cluster.plan import MAX_BASE_PORT
from hpcvision.config import option, required

LAUNCHER_HELP = "how ranks start (default: srun on Slurm, mpirun on PBS; aprun on Cray)"
# A job's ports run from its base port upwards; below 1024 needs root.
PORT_BOUNDS = {"minimum": 1024, "maximum": MAX_BASE_PORT}


@dataclass(frozen=True)
class ShowConfig:
    """Everything `cluster show` needs."""

    ps: int = option(0, "parameter-server tasks (placed on GPU-less hosts first)", minimum=0)
    port: int | None = option(None, "base port (default: $HPCVISION_BASE_PORT, else from the job id)",
                              **PORT_BOUNDS)
    source: str | None = option(None, "force one source (default: $HPCVISION_DISCOVERY or auto)", choices=SOURCES)


@dataclass(frozen=True)
class JobConfig:
    """Everything `job pbs|slurm STAGE` needs: resources, set-up, launcher, where the script goes.

    `stage_args` is what followed on the command line (`--` then the stage's own options), as typed.
    """

    nodes: int = option(1, "nodes (the GPU nodes of a mixed job)", minimum=1)
    cpu_nodes: int = option(0, "train: CPU-only nodes in the same job besides the --nodes GPU nodes; they run "
                            "the parameter servers (--ps auto) or, with all-reduce, the input service "
                            "(default: 0, one kind of node)", minimum=0)
    cpu_node_cores: int | None = option(None, "cores asked for on each CPU node of a mixed job (default: a GPU "
                                        "node's, --tasks-per-node x --cpus-per-task)", minimum=1)
    tasks_per_node: int = option(1, "processes per node: 1 per node, or one per GPU", minimum=1)
    cpus_per_task: int | None = option(None, "CPU cores per process (default: the scheduler's)", minimum=1)
    gpus_per_node: int = option(0, "GPUs per node", minimum=0)
    walltime: str | None = option(None, "HH:MM:SS; train checkpoints and stops a margin before it "
                                  "(default: the queue's limit)")
    queue: str | None = option(None, "queue (PBS) / partition (Slurm) (default: the scheduler's)",
                               aliases=("--partition",))
    cpu_queue: str | None = option(None, "Slurm mixed job: partition of the CPU nodes (default: --queue)",
                                   aliases=("--cpu-partition",))
    account: str | None = option(None, "account/project to charge (default: the scheduler's)")
    job_name: str | None = option(None, "job name: letters, digits, _ . - (default: hpcvision-STAGE)")
    setup: tuple[str, ...] = option((), "shell line run before the stage, verbatim (module load, source venv); "
                                    "repeatable (default: none)", repeat=True, metavar="LINE")
    log_dir: str | None = option(None, "directory for the job's output file (default: the scheduler's)")
    launcher: str = option("auto", LAUNCHER_HELP, choices=LAUNCHERS)
    ps: str = option("auto", "train: parameter-server tasks, N or auto: one per CPU node of a mixed job when "
                     "train's --strategy is parameter-server or auto, else 0 (default: auto)",
                     aliases=("--num-ps",), metavar="{N,auto}")
    directive: tuple[str, ...] = option((), "an extra #SBATCH/#PBS line, repeatable: --directive=--mem=64G, "
                                        "--directive '-l mem=64gb' (default: none)", repeat=True, metavar="LINE")
    grid: tuple[str, ...] = option((), "sweep: KEY=V1,V2 over a train option, repeatable; one run per point of "
                                   "the product (default: none)", repeat=True, metavar="KEY=V1,V2")
    port: int | None = option(None, "base port of the TF servers on each host (default: from the job id)",
                              **PORT_BOUNDS)
    out: str | None = option(None, "write the script here (pipeline: the driver; stage scripts beside it) "
                             "(default: print the script)")
    submit: bool = option(False, "submit with qsub/sbatch and print the job id(s)")
    resubmit: bool = option(False, f"train: when train exits {EXIT_MORE_TO_DO} (walltime reached, more to do), "
                            "queue the job again")
    max_resubmits: int = option(5, "bound on --resubmit", minimum=0)
    stage_args: tuple[str, ...] = option((), "-- then the stage's own options (default: none)", positional=True,
                                         nargs=argparse.REMAINDER)


def _launcher(scheduler: str) -> Any:
    """The --launcher field of one scheduler: only the launchers its jobs can use."""
    return option("auto", LAUNCHER_HELP, choices=SCHEDULER_LAUNCHERS[scheduler])


@dataclass(frozen=True)
class PbsJobConfig(JobConfig):
    """`job pbs STAGE`: ranks start with mpirun (or aprun on a Cray)."""

    launcher: str = _launcher("pbs")
    flavor: str = option("pro", "PBS Pro (select=..:mpiprocs=..) or Torque (nodes=N:ppn=P[:gpus=G], mpirun "
                         "--map-by ppr:T:node)", choices=PBS_FLAVORS)


@dataclass(frozen=True)
class SlurmJobConfig(JobConfig):
    """`job slurm STAGE`: ranks start with srun (or mpirun)."""

    launcher: str = _launcher("slurm")


# The options of `job SCHEDULER STAGE`.
JOB_CONFIGS: dict[str, type[JobConfig]] = {"pbs": PbsJobConfig, "slurm": SlurmJobConfig}


@dataclass(frozen=True)
class ResubmitConfig:
    """Everything `job resubmit` needs (the job script calls it, see `JobConfig.resubmit`)."""

    scheduler: str = required("the scheduler the job runs under", positional=True, choices=SCHEDULERS,
                              metavar="{pbs,slurm}")
    script: Path = required("the job script to submit again", positional=True)
    max_resubmits: int = option(5, "stop once the job has queued itself this many times", minimum=0)
