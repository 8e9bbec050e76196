"""The cluster plan: this process's role, the TF_CONFIG, its ports and GPUs, worked out once.

`plan_cluster` runs discovery once (so the MPI allgather, a collective, happens at most once), places
the roles (parameter servers on GPU-less hosts first), derives the ports and the GPUs this task should
see, and returns a frozen `ClusterPlan` that `train` hands to the strategy and the loop. `describe` is
the same plan as `hpcvision cluster show` prints it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpcvision.cluster.discovery import Discovery, HostGather, Task, discover, env_int, mpi_allgather_hosts
from hpcvision.cluster.spec import (
    chief_address,
    cluster_spec,
    is_chief,
    layout,
    task_of,
    tasks_in_order,
    tf_config,
)
from hpcvision.errors import UserError

# Train's warnings about the discovered job have always carried this logger's name.
log = logging.getLogger("hpcvision.cluster.discovery")

DEFAULT_BASE_PORT = 2222
# Ports of one job on one host: base .. base + PORTS_PER_JOB - 1 (one per local task).
PORTS_PER_JOB = 64
MAX_BASE_PORT = 65535 - PORTS_PER_JOB
# A base port derived from the job id: FIRST_JOB_PORT + (id mod JOB_PORT_WINDOWS) x PORTS_PER_JOB.
FIRST_JOB_PORT = 20000
JOB_PORT_WINDOWS = 600


@dataclass(frozen=True)
class ClusterPlan:
    """This process's place in the job: what discovery found and every decision made from it."""

    found: Discovery  # scheduler, hosts, this rank, notes
    roles: tuple[tuple[str, int], ...]  # (task type, index) of every rank, in rank order
    task_type: str  # chief | ps | worker (a process alone is worker 0)
    task_index: int
    tf_config: dict | None  # None: this process runs alone
    chief: str | None  # host:port of the chief task; None when alone
    is_chief: bool  # writes checkpoints, summaries, run.yaml (`spec.chief_of`)
    base_port: int | None  # first port of this job on each host; None: no ports of ours (alone, TF_CONFIG given)
    visible_gpus: str | None  # CUDA_VISIBLE_DEVICES to set before TensorFlow starts; None: leave it
    gpu_reason: str = ""  # why `visible_gpus` is what it is (`cluster show`, train's log)

    def log_notes(self) -> None:
        """Warn about anything odd discovery found (an explicit TF_CONFIG is used as is: nothing to say)."""
        if self.found.tf_config is None:
            for note in self.found.notes:
                log.warning("cluster discovery: %s", note)
        if self.gpu_reason:
            log.info("cluster GPUs: %s", self.gpu_reason)


def plan_cluster(num_ps: int = 0, environ: Mapping[str, str] | None = None, source: str | None = None,
                 gather_hosts: HostGather = mpi_allgather_hosts) -> ClusterPlan:
    """This process's plan: an explicit TF_CONFIG as is, else roles, ports and GPUs for the discovered job.

    `source` forces a discovery source; `gather_hosts` stands in for the MPI allgather (tests).
    """
    env = os.environ if environ is None else environ
    if source is None and env.get("TF_CONFIG"):
        source = "tf_config"  # wins over HPCVISION_DISCOVERY: `hpcvision launch` children inherit both
    found = discover(env, source, gather_hosts)
    if found.tf_config is not None:
        return _given_plan(found)
    if found.size <= 1:
        roles = tuple(assign_roles(found.tasks, 0))
        return ClusterPlan(found, roles, "worker", 0, None, None, True, None, *gpu_choice(found, roles, env))
    return _discovered_plan(found, num_ps, env)


def _given_plan(found: Discovery) -> ClusterPlan:
    """The plan of a TF_CONFIG the user (or `hpcvision launch`) wrote: used as is, GPUs left to the user."""
    config = found.tf_config
    cluster = config["cluster"]
    task_type, task_index = task_of(config)
    roles = tuple((t, i) for t, i, _ in tasks_in_order(cluster))
    return ClusterPlan(found, roles, task_type, task_index, config, chief_address(cluster),
                       is_chief(task_type, task_index, cluster), None, None, "TF_CONFIG given: GPUs left as they are")


def _discovered_plan(found: Discovery, num_ps: int, env: Mapping[str, str]) -> ClusterPlan:
    """Roles, TF_CONFIG and GPUs for a job of several ranks found from the scheduler or mpirun."""
    port = base_port(env, found.job_id)
    roles = tuple(assign_roles(found.tasks, num_ps))
    task_type, task_index = roles[found.rank]
    # A task listens on the base port + its slot on its host: two tasks on one host never collide.
    cluster = cluster_spec(roles, [f"{task.host}:{port + task.local_index}" for task in found.tasks])
    return ClusterPlan(found, roles, task_type, task_index, tf_config(cluster, task_type, task_index),
                       chief_address(cluster), is_chief(task_type, task_index, cluster), port,
                       *gpu_choice(found, roles, env))


def base_port(environ: Mapping[str, str] | None = None, job_id: str | None = None) -> int:
    """First port of this job on every host: HPCVISION_BASE_PORT, else derived from the job id (and a PBS array
    index), else 2222.

    Deriving from the job id keeps two jobs sharing a node apart; every rank derives the same value.
    """
    env = os.environ if environ is None else environ
    if env.get("HPCVISION_BASE_PORT"):
        port = env_int(env, "HPCVISION_BASE_PORT")
        if not 1024 <= port <= MAX_BASE_PORT:
            raise UserError(f"HPCVISION_BASE_PORT={port}: choose 1024..{MAX_BASE_PORT}")
        return port
    number = re.match(r"(\d+)(?:\[(\d+)\])?", job_id or "")
    if number:
        # The subjobs of a PBS array (a sweep: 4711[3].srv) share the number before the index: add it, so two
        # points sharing a node get ports of their own. Slurm gives each array task a job id of its own.
        job = int(number.group(1)) + int(number.group(2) or 0)
        return FIRST_JOB_PORT + (job % JOB_PORT_WINDOWS) * PORTS_PER_JOB
    return DEFAULT_BASE_PORT


def assign_roles(tasks: Sequence[Task], num_ps: int = 0) -> list[tuple[str, int]]:
    """(task type, index) per rank, the tasks `spec.layout` gives. No ps: all workers, rank 0 is worker 0.

    With ps: parameter servers go to tasks on hosts without GPUs first, one per host before a
    second on any, then the chief (the coordinator does no heavy compute), then workers, GPU hosts first.
    """
    if num_ps < 0:
        raise UserError(f"--ps {num_ps}: must be >= 0")
    if num_ps == 0:
        return layout(len(tasks), 0)
    if len(tasks) < num_ps + 2:
        raise UserError(
            f"--ps {num_ps} needs at least {num_ps + 2} tasks (ps + chief + 1 worker); the job has {len(tasks)}"
        )
    # First slot of every GPU-less host, then second slots...: ps spread over hosts share the traffic.
    cpu_first = sorted(range(len(tasks)), key=lambda r: (tasks[r].host_gpus > 0, tasks[r].local_index, r))
    ps_ranks = cpu_first[:num_ps]
    chief_rank = cpu_first[num_ps]
    worker_ranks = sorted(
        (r for r in range(len(tasks)) if r not in ps_ranks and r != chief_rank),
        key=lambda r: (tasks[r].host_gpus == 0, r),
    )
    roles: list[tuple[str, int]] = [("", 0)] * len(tasks)
    # In layout's order: the chief, the ps by rank, the workers GPU hosts first.
    for rank, role in zip([chief_rank, *sorted(ps_ranks), *worker_ranks], layout(len(worker_ranks), num_ps),
                          strict=True):
        roles[rank] = role
    return roles


def visible_gpus(found: Discovery, roles: Sequence[tuple[str, int]], environ: Mapping[str, str]) -> str | None:
    """The CUDA_VISIBLE_DEVICES this task should use, or None to leave it as the launcher set it (`gpu_choice`)."""
    return gpu_choice(found, roles, environ)[0]


# Local rank on this host, as the launcher numbers it (Slurm, Open MPI, MPICH/Intel MPI).
LOCAL_RANK_VARS = ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")


def gpu_choice(found: Discovery, roles: Sequence[tuple[str, int]],
               environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(CUDA_VISIBLE_DEVICES for this task or None to leave it, why), decided once.

    Parameter servers (and the PS chief) get "" so they hold no GPU memory. Several tasks on a host that
    all inherited the same GPU list (Slurm without --gpus-per-task/--gpu-bind does this) split it by local
    rank; with nothing inherited, as many tasks on a host as it has GPUs take the GPU of their slot.
    """
    me = found.tasks[found.rank]
    task_type = roles[found.rank][0]
    if task_type == "ps" or (task_type == "chief" and any(r[0] == "ps" for r in roles)):
        return "", f"{task_type} of a parameter-server job: no GPU (it computes no gradients)"
    on_host = sum(1 for t in found.tasks if t.host == me.host)
    inherited = environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        ids = [v.strip() for v in inherited.split(",") if v.strip()]
        if on_host > 1 and len(ids) > 1 and len(ids) % on_host == 0:
            local = _local_rank(environ, me.local_index, on_host)
            share = len(ids) // on_host
            mine = ",".join(ids[local * share:(local + 1) * share])
            return mine, (f"CUDA_VISIBLE_DEVICES={inherited} was given to all {on_host} tasks on {me.host}: "
                          f"local rank {local} takes {mine}")
        if on_host > 1 and len(ids) > 1:
            return None, (f"CUDA_VISIBLE_DEVICES={inherited} for {on_host} tasks on {me.host} does not split "
                          "evenly: left as is (the tasks share these GPUs)")
        return None, f"CUDA_VISIBLE_DEVICES={inherited!r} set by the launcher: kept"
    if me.host_gpus > 1 and on_host == me.host_gpus:
        return str(me.local_index), f"{on_host} tasks on {me.host}'s {on_host} GPUs: slot {me.local_index} takes GPU {me.local_index}"
    if me.host_gpus and on_host > 1:
        return None, f"{on_host} tasks share {me.host}'s {me.host_gpus} GPU(s): each sees all of them"
    if not me.host_gpus:
        return None, f"no GPU on {me.host}"
    return None, f"{me.host}'s {me.host_gpus} GPU(s) for this task"


def _local_rank(environ: Mapping[str, str], slot: int, on_host: int) -> int:
    """The launcher's local rank when it gives one that fits, else the slot discovery placed the task in."""
    for name in LOCAL_RANK_VARS:
        value = environ.get(name, "")
        if value.isdigit() and int(value) < on_host:
            return int(value)
    return slot


def describe(num_ps: int = 0, environ: Mapping[str, str] | None = None, source: str | None = None,
             gather_hosts: HostGather = mpi_allgather_hosts) -> dict:
    """Everything `hpcvision cluster show` prints, as a JSON-ready dict."""
    env = os.environ if environ is None else environ
    # `cluster show` inspects a forced source (flag or HPCVISION_DISCOVERY) even where TF_CONFIG is set.
    plan = plan_cluster(num_ps, env, source or env.get("HPCVISION_DISCOVERY") or None, gather_hosts)
    found = plan.found
    return {
        "scheduler": found.scheduler,
        "job_id": found.job_id,
        "rank": found.rank,
        "ranks": found.size,
        "host": found.tasks[found.rank].host,
        "role": plan.tf_config["task"] if plan.tf_config else {"type": "worker", "index": 0},
        "hosts": found.hosts(),
        "base_port": base_port(env, found.job_id) if plan.base_port is None else plan.base_port,
        "tf_config": plan.tf_config,
        "cuda_visible_devices": plan.visible_gpus,
        "gpu_binding": plan.gpu_reason,
        "notes": list(found.notes),
    }
