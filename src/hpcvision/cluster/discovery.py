"""Who am I in this job? One `Task` per rank and this rank, read from the launcher's environment.

Stable entry points:
- `process_rank()`: (rank, ranks) for `data extract/build` defaults (environment only, no MPI calls);
- `resolve_rank(rank, ranks)`: the same with `--rank/--ranks` overriding it (the one rank rule of the data stages);
- `discover()`: everything found (scheduler, one `Task` per rank, this rank, notes), which
  `hpcvision.cluster.plan` turns into roles, ports and the TF_CONFIG.

Sources, first match wins: an explicit TF_CONFIG; Slurm (SLURM_PROCID + the step's node list and
tasks per node, or each component's in a heterogeneous job); PBS Pro / Torque ($PBS_NODEFILE, ranks
per host from the node file or HPCVISION_TASKS_PER_NODE, rank from the MPI launcher or pbsdsh); plain
mpirun (mpi4py allgather of host names and GPU counts). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hpcvision.cluster.formats import (
    cores_per_task,
    expand_nodelist,
    expand_tasks_per_node,
    gpu_overrides,
    group_slots,
    local_gpu_count,
    pbs_gpu_counts,
    read_nodefile,
    slurm_gpus_per_node,
    slurm_het_groups,
    tasks_per_host,
)
from hpcvision.cluster.spec import load_tf_config, task_of, tasks_in_order
from hpcvision.errors import UserError

# (rank variable, size variable) set by common launchers, most specific first. Cray's aprun sets
# ALPS_APP_PE for the rank and PMI_SIZE for the size.
LAUNCHER_RANK_VARS = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMIX_RANK", "PMIX_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),
    ("ALPS_APP_PE", "PMI_SIZE"),
    # Inside an srun step only: the batch script itself also has SLURM_PROCID=0 and SLURM_NTASKS=N.
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
)
# Rank variables that mean "started by an MPI launcher" (mpi4py can then be used).
MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "ALPS_APP_PE")
SOURCES = ("auto", "tf_config", "slurm", "pbs", "mpi", "local")


@dataclass(frozen=True)
class Task:
    """One process of the job: the host it runs on, its slot index on that host, the host's GPUs."""

    host: str
    local_index: int
    host_gpus: int


@dataclass(frozen=True)
class Discovery:
    """What the environment says about this job: one Task per rank, in rank order, and this rank."""

    scheduler: str
    rank: int
    tasks: tuple[Task, ...]
    job_id: str | None = None
    notes: tuple[str, ...] = ()  # anything suspicious, for `cluster show` and train's log
    tf_config: dict | None = None  # the TF_CONFIG itself when the scheduler is "tf_config"

    @property
    def size(self) -> int:
        return len(self.tasks)

    def hosts(self) -> list[dict]:
        """Hosts in first-use order with their task count and GPU count."""
        seen: dict[str, dict] = {}
        for task in self.tasks:
            entry = seen.setdefault(task.host, {"host": task.host, "tasks": 0, "gpus": task.host_gpus})
            entry["tasks"] += 1
        return list(seen.values())


# ---------------------------------------------------------------------------------------------
# Rank only (cheap; used by data extract/build)


def process_rank(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's (rank, number of ranks); (0, 1) outside a parallel launcher."""
    env = os.environ if environ is None else environ
    for rank_var, size_var in LAUNCHER_RANK_VARS:
        if rank_var in env and size_var in env:
            return env_int(env, rank_var), env_int(env, size_var)
    if "PBS_VNODENUM" in env and env.get("PBS_NODEFILE"):
        # pbsdsh starts one task per line of the node file; the line number is the rank.
        return env_int(env, "PBS_VNODENUM"), len(read_nodefile(env["PBS_NODEFILE"]))
    return 0, 1


def resolve_rank(rank: int | None = None, ranks: int | None = None) -> tuple[int, int]:
    """`process_rank()` with explicit --rank/--ranks winning over the environment; UserError if they do not fit."""
    env_rank, env_ranks = process_rank()
    rank = env_rank if rank is None else rank
    ranks = env_ranks if ranks is None else ranks
    if ranks < 1:
        raise UserError(f"--ranks must be at least 1, got {ranks}")
    if not 0 <= rank < ranks:
        raise UserError(f"--rank {rank} --ranks {ranks}: --rank must be in 0..{ranks - 1}")
    return rank, ranks


def env_int(env: Mapping[str, str], name: str) -> int:
    """The integer in environment variable `name`; a one-line UserError if it is not one."""
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"environment: {name}={env[name]!r} is not an integer") from None


# ---------------------------------------------------------------------------------------------
# Discovery

# Every rank's (host name, GPU count), or None when it cannot be gathered: `mpi_allgather_hosts`, or a
# stand-in that tests pass to `discover`.
HostGather = Callable[[Mapping[str, str]], list[tuple[str, int]] | None]


def mpi_allgather_hosts(env: Mapping[str, str]) -> list[tuple[str, int]] | None:
    """Every rank's (host name, GPU count), via mpi4py; None when mpi4py is missing.

    Collective: every rank must call it exactly once, which `plan_cluster` (one discovery per process) ensures.
    """
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD.allgather((socket.gethostname(), local_gpu_count(env)))


def discover(environ: Mapping[str, str] | None = None, source: str | None = None,
             gather_hosts: HostGather = mpi_allgather_hosts) -> Discovery:
    """Turn the environment into one Task per rank plus this rank; `source` (or HPCVISION_DISCOVERY) forces one.

    `gather_hosts` is called (once) only when the hosts come from plain mpirun.
    """
    env = os.environ if environ is None else environ
    source = source or env.get("HPCVISION_DISCOVERY", "auto") or "auto"
    if source not in SOURCES:
        raise UserError(f"HPCVISION_DISCOVERY={source!r}: choose one of {', '.join(SOURCES)}")
    if source == "tf_config" or (source == "auto" and env.get("TF_CONFIG")):
        return _from_tf_config(env)
    if source == "slurm" or (source == "auto" and _in_slurm_step(env)):
        return _from_slurm(env)
    if source == "pbs" or (source == "auto" and env.get("PBS_NODEFILE")):
        return _from_pbs(env)
    if source == "mpi" or (source == "auto" and any(v in env for v in MPI_RANK_VARS)):
        return _from_mpi(env, gather_hosts)
    note = "in a Slurm job but not in an srun step: one process (start ranks with srun)"
    me = Task(socket.gethostname(), 0, _gpus_for_host("", env, None))
    return Discovery("local", 0, (me,), notes=(note,) if env.get("SLURM_JOB_ID") else ())


def _from_tf_config(env: Mapping[str, str]) -> Discovery:
    config = load_tf_config(env)
    me = task_of(config)
    tasks, rank = [], 0
    for position, (task_type, index, address) in enumerate(tasks_in_order(config["cluster"])):
        if (task_type, index) == me:
            rank = position
        tasks.append(Task(address.rsplit(":", 1)[0], position, 0))
    return Discovery("tf_config", rank, tuple(tasks), notes=("TF_CONFIG given: used as is",), tf_config=config)


def _slurm_nodelist(env: Mapping[str, str]) -> str:
    return env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")


def _in_slurm_step(env: Mapping[str, str]) -> bool:
    """Started by srun (not the batch script itself, not mpirun inside an allocation)."""
    if "SLURM_PROCID" not in env or "SLURM_STEP_NUM_TASKS" not in env or not _slurm_nodelist(env):
        return False
    for rank_var, size_var in LAUNCHER_RANK_VARS[:5]:
        rank_differs = rank_var in env and env[rank_var] != env["SLURM_PROCID"]
        size_differs = size_var in env and env[size_var] != env["SLURM_STEP_NUM_TASKS"]
        if rank_differs or size_differs:
            return False  # mpirun inside an allocation: its ranks, not Slurm's, are the truth
    return True


def _from_slurm(env: Mapping[str, str]) -> Discovery:
    if "SLURM_PROCID" not in env or not _slurm_nodelist(env):
        raise UserError("Slurm: SLURM_PROCID and SLURM_STEP_NODELIST are not set (run under srun)")
    size_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    size = env_int(env, size_var) if size_var in env else None
    het = _slurm_het_tasks(env, size)
    if het is not None:
        tasks, notes = het
    else:
        tasks, notes = _slurm_step_tasks(env, size, size_var), []
    rank = env_int(env, "SLURM_PROCID")
    _check_rank(rank, tasks, "SLURM_PROCID")
    if het is None and "SLURM_LOCALID" in env and env_int(env, "SLURM_LOCALID") != tasks[rank].local_index:
        notes.append("SLURM_LOCALID differs from block distribution; use srun --distribution=block (the default)")
    return Discovery("slurm", rank, tuple(tasks), job_id=env.get("SLURM_JOB_ID"), notes=tuple(notes))


def _slurm_step_tasks(env: Mapping[str, str], size: int | None, size_var: str) -> list[Task]:
    """One Task per rank of an ordinary step: its node list, tasks per node (block distribution), GPUs."""
    hosts = expand_nodelist(_slurm_nodelist(env))
    per_node_text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if per_node_text:
        per_node = expand_tasks_per_node(per_node_text)
    else:
        per_node = [1] * len(hosts) if size is None else _block_split(size or 1, len(hosts))
    if len(per_node) != len(hosts):
        raise UserError(
            f"Slurm: {len(hosts)} hosts in the node list but tasks per node {per_node_text!r} "
            f"names {len(per_node)}"
        )
    tasks = _block_tasks(list(zip(hosts, per_node, strict=True)), env, slurm_gpus_per_node(env))
    if size is not None and size != len(tasks):
        raise UserError(f"Slurm: {size_var}={size} but tasks per node {per_node_text!r} add up to {len(tasks)}")
    return tasks


def _slurm_het_tasks(env: Mapping[str, str], size: int | None) -> tuple[list[Task], list[str]] | None:
    """Tasks of a step spanning the components of a heterogeneous job (`srun --het-group=0,1`), component 0's
    first; None when this is no heterogeneous job or the step covers one component only (its SLURM_STEP_* say).

    SLURM_PROCID counts across the components of such a step; each component's hosts, tasks per node and
    GPUs come from its own variables (SLURM_JOB_NODELIST_HET_GROUP_<n>, ...).
    """
    groups = slurm_het_groups(env)
    if not groups:
        return None
    tasks: list[Task] = []
    counts = []
    for group in groups:
        suffix = f"_HET_GROUP_{group}"
        nodelist = env.get(f"SLURM_STEP_NODELIST{suffix}") or env.get(f"SLURM_JOB_NODELIST{suffix}")
        if not nodelist:
            raise UserError(f"Slurm heterogeneous job: SLURM_JOB_NODELIST{suffix} is not set (no component {group})")
        hosts = expand_nodelist(nodelist)
        per_node_text = env.get(f"SLURM_STEP_TASKS_PER_NODE{suffix}") or env.get(f"SLURM_TASKS_PER_NODE{suffix}")
        if per_node_text:
            per_node = expand_tasks_per_node(per_node_text)
        elif f"SLURM_NTASKS{suffix}" in env:
            per_node = _block_split(env_int(env, f"SLURM_NTASKS{suffix}"), len(hosts))
        else:
            raise UserError(f"Slurm heterogeneous job: SLURM_TASKS_PER_NODE{suffix} is not set")
        if len(per_node) != len(hosts):
            raise UserError(f"Slurm: {len(hosts)} hosts in SLURM_JOB_NODELIST{suffix} but tasks per node "
                            f"{per_node_text!r} names {len(per_node)}")
        tasks += _block_tasks(list(zip(hosts, per_node, strict=True)), env, slurm_gpus_per_node(env, suffix))
        counts.append(str(sum(per_node)))
    if size is not None and size != len(tasks) and "HPCVISION_HET_GROUPS" not in env:
        return None  # a step in one component: its own SLURM_STEP_* describe it
    note = (f"heterogeneous job: components {','.join(map(str, groups))} with {' + '.join(counts)} tasks; "
            "SLURM_PROCID counts across them")
    return tasks, [note]


def _block_split(total: int, nodes: int) -> list[int]:
    """Slurm's block distribution when no per-node count is given: as even as possible, earlier first."""
    base, extra = divmod(total, max(nodes, 1))
    return [base + (1 if i < extra else 0) for i in range(nodes)]


def _from_pbs(env: Mapping[str, str]) -> Discovery:
    rank, size = process_rank(env)
    slots, notes = _pbs_slots(env)
    tasks = _block_tasks(slots, env, None)
    if size > len(tasks):
        raise UserError(f"{env['PBS_NODEFILE']}: {size} ranks but the node file holds {len(tasks)} slots")
    _check_rank(rank, tasks[:size], "rank")
    if size == 1 and len(tasks) > 1:
        notes.append(
            f"not started by a launcher: one process (the job has {len(tasks)} slots on {len(slots)} hosts; "
            "start ranks with mpirun/aprun/pbsdsh)"
        )
    used = {task.host for task in tasks[:size]}
    if size > 1 and len(used) == 1 and len(slots) > 1:
        notes.append(
            f"all {size} ranks are on {tasks[0].host} though the job has {len(slots)} hosts: a Torque node file "
            "lists a host once per core (ppn); start T ranks per host (mpirun --map-by ppr:T:node) and set "
            "HPCVISION_TASKS_PER_NODE=T, as `job pbs --flavor torque` does"
        )
    local = env.get("OMPI_COMM_WORLD_LOCAL_RANK") or env.get("MPI_LOCALRANKID")
    if local is not None and local.isdigit() and int(local) != tasks[rank].local_index:
        notes.append(
            f"launcher's local rank {local} differs from the node file's slot order; "
            "map ranks by slot (the mpirun default) or set HPCVISION_DISCOVERY=mpi"
        )
    return Discovery("pbs", rank, tuple(tasks[:size]), job_id=env.get("PBS_JOBID"), notes=tuple(notes))


def _pbs_slots(env: Mapping[str, str]) -> tuple[list[tuple[str, int]], list[str]]:
    """(host, ranks) from the node file: one rank per line (PBS Pro's mpiprocs), or spread when the job
    says how (Torque lists a host once per core): HPCVISION_TASKS_PER_NODE=T, HPCVISION_CORES_PER_TASK=C."""
    slots = group_slots(read_nodefile(env["PBS_NODEFILE"]))
    per_host, cores = tasks_per_host(env), cores_per_task(env)
    if per_host is not None:
        spread = [(host, min(per_host, lines)) for host, lines in slots]
        why = f"HPCVISION_TASKS_PER_NODE={per_host}"
    elif cores is not None:
        spread = [(host, max(lines // cores, 1)) for host, lines in slots]
        why = f"HPCVISION_CORES_PER_TASK={cores}"
    else:
        return slots, []
    if spread == slots:
        return slots, []
    described = ", ".join(f"{host} {n}" for host, n in spread[:4]) + (", ..." if len(spread) > 4 else "")
    return spread, [f"{why}: ranks per host {described} (the node file lists {sum(n for _, n in slots)} lines)"]


def _from_mpi(env: Mapping[str, str], gather_hosts: HostGather) -> Discovery:
    rank, size = process_rank(env)
    gathered = gather_hosts(env)
    if gathered is None:
        local_var = next((v for v in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS") if env.get(v)), None)
        if local_var is None or env_int(env, local_var) != size:
            raise UserError(
                "mpirun across hosts but no node list (PBS_NODEFILE/SLURM_*) and mpi4py is not "
                "installed: pip install 'hpcvision[mpi]'"
            )
        gathered = [(socket.gethostname(), local_gpu_count(env))] * size
    counts: dict[str, int] = {}
    tasks = []
    for host, gpus in gathered:
        tasks.append(Task(host, counts.get(host, 0), gpus))
        counts[host] = counts.get(host, 0) + 1
    _check_rank(rank, tasks, "MPI rank")
    return Discovery("mpi", rank, tuple(tasks), notes=("hosts from an mpi4py allgather",))


def _block_tasks(slots: list[tuple[str, int]], env: Mapping[str, str], uniform: int | None) -> list[Task]:
    pbs_gpus = pbs_gpu_counts(env)
    tasks = []
    for host, count in slots:
        gpus = _gpus_for_host(host, env, uniform, pbs_gpus)
        tasks.extend(Task(host, i, gpus) for i in range(count))
    return tasks


def _gpus_for_host(
    host: str, env: Mapping[str, str], uniform: int | None, pbs_gpus: dict[str, int] | None = None
) -> int:
    """GPU count for a host: HPCVISION_GPUS, the scheduler's own figure, else this host's devices."""
    every, per_host = gpu_overrides(env)
    if host in per_host:
        return per_host[host]
    if every is not None:
        return every
    if pbs_gpus:
        return pbs_gpus.get(host, 0)
    if uniform is not None:
        return uniform
    if "SLURM_JOB_ID" in env:
        return 0  # Slurm sets SLURM_GPUS_* whenever GPUs were requested
    return local_gpu_count(env)


def _check_rank(rank: int, tasks: Sequence[Task], what: str) -> None:
    if not 0 <= rank < len(tasks):
        raise UserError(f"{what} {rank} is outside the {len(tasks)} tasks the scheduler lists")


