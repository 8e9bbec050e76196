"""Who am I in this job? Rank, size and the TensorFlow cluster from the launcher's environment.

Stable entry points:
- `process_rank()`: (rank, ranks) for `data extract/build` defaults (environment only, no MPI calls);
- `resolve_rank(rank, ranks)`: the same with `--rank/--ranks` overriding it (the one rank rule of the data stages);
- `resolve_tf_config(num_ps)`: the TF_CONFIG dict for this process, or None for one process;
- `discover()`: everything found (scheduler, one `Task` per rank, this rank), for `cluster show`.

Sources, first match wins: an explicit TF_CONFIG; Slurm (SLURM_PROCID + the step's node list and
tasks per node); PBS Pro / Torque ($PBS_NODEFILE, rank from the MPI launcher or pbsdsh); plain
mpirun (mpi4py allgather of host names and GPU counts). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from hpcvision.errors import UserError

log = logging.getLogger(__name__)

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

DEFAULT_BASE_PORT = 2222
# Ports of one job on one host: base .. base + PORTS_PER_JOB - 1 (one per local task).
PORTS_PER_JOB = 64
MAX_BASE_PORT = 65535 - PORTS_PER_JOB
SOURCES = ("auto", "tf_config", "slurm", "pbs", "mpi", "local")


@dataclass(frozen=True)
class Task:
    """One process of the job: the host it runs on, its slot index on that host, the host's GPUs."""

    host: str
    local_index: int
    host_gpus: int


@dataclass
class Discovery:
    """What the environment says about this job: one Task per rank, in rank order, and this rank."""

    scheduler: str
    rank: int
    tasks: list[Task]
    job_id: str | None = None
    notes: list[str] = field(default_factory=list)

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
# Parsers for scheduler formats


def expand_nodelist(text: str) -> list[str]:
    """Slurm host list to names: `nid[00010-00012,00020],gpu01` -> nid00010 ... gpu01 (keeps padding)."""
    hosts: list[str] = []
    for item in _split_top_level(text.strip()):
        if item:
            hosts.extend(_expand_item(item, text))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _expand_item(item: str, whole: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", item)
    if match is None:
        if "[" in item or "]" in item:
            raise UserError(f"SLURM node list {whole!r}: unbalanced brackets in {item!r}")
        return [item]
    prefix, suffix = item[: match.start()], item[match.end() :]
    names = []
    for part in match.group(1).split(","):
        for number in _expand_range(part, whole):
            names.extend(_expand_item(prefix + number + suffix, whole))
    return names


def _expand_range(part: str, whole: str) -> list[str]:
    low, _, high = part.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        raise UserError(f"SLURM node list {whole!r}: cannot read range {part!r}")
    if not high:
        return [low]
    width = len(low)
    if int(high) < int(low):
        raise UserError(f"SLURM node list {whole!r}: range {part!r} runs backwards")
    return [str(n).zfill(width) for n in range(int(low), int(high) + 1)]


def expand_tasks_per_node(text: str) -> list[int]:
    """Slurm tasks per node to one count per node: `2(x3),1` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in text.strip().split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if match is None:
            raise UserError(f"SLURM tasks per node {text!r}: cannot read {item!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def read_nodefile(path: str) -> list[str]:
    """Lines of a PBS node file (one per slot; a host repeats once per slot), blank lines dropped."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError as exc:
        raise UserError(f"{path}: cannot read PBS_NODEFILE ({exc.strerror})") from None
    hosts = [line.split()[0] for line in lines if line and not line.startswith("#")]
    if not hosts:
        raise UserError(f"{path}: PBS_NODEFILE lists no hosts")
    return hosts


def group_slots(hosts: list[str]) -> list[tuple[str, int]]:
    """(host, slots) in first-appearance order; mpirun's default by-slot mapping fills hosts this way."""
    counts: dict[str, int] = {}
    for host in hosts:
        counts[host] = counts.get(host, 0) + 1
    return list(counts.items())


def slurm_gpus_per_node(env: Mapping[str, str]) -> int | None:
    """GPUs per node from SLURM_GPUS_PER_NODE (`4`, `a100:4`, `gpu:a100:4`); 0 when the job asked for none."""
    for name in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE"):
        value = env.get(name, "").strip()
        if value:
            match = re.search(r"(\d+)\s*$", value.split(",")[0].split("(")[0])
            if match:
                return int(match.group(1))
    return None


def local_gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use, without importing TensorFlow: CUDA_VISIBLE_DEVICES, else /dev/nvidiaN."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        return 0 if not ids or ids[0].strip() == "-1" else len(ids)
    return len([p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)])


def gpu_overrides(env: Mapping[str, str]) -> tuple[int | None, dict[str, int]]:
    """HPCVISION_GPUS: `4` (every host) or `cpu01=0,gpu01=4` (per host) for schedulers that don't say."""
    text = env.get("HPCVISION_GPUS", "").strip()
    if not text:
        return None, {}
    if text.isdigit():
        return int(text), {}
    per_host = {}
    for item in text.split(","):
        host, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise UserError(f"HPCVISION_GPUS={text!r}: expected N or host=N,host=N")
        per_host[host.strip()] = int(count)
    return None, per_host


def pbs_gpu_counts(env: Mapping[str, str]) -> dict[str, int]:
    """Torque's PBS_GPUFILE lists `host-gpuN` per GPU: count them per host."""
    path = env.get("PBS_GPUFILE")
    counts: dict[str, int] = {}
    if not path or not os.path.exists(path):
        return counts
    for line in read_nodefile(path):
        host = re.sub(r"-gpu\d+$", "", line)
        counts[host] = counts.get(host, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# Discovery


def discover(environ: Mapping[str, str] | None = None, source: str | None = None) -> Discovery:
    """Turn the environment into one Task per rank plus this rank; `source` (or HPCVISION_DISCOVERY) forces one."""
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
        return _from_mpi(env)
    alone = Discovery("local", 0, [Task(socket.gethostname(), 0, _gpus_for_host("", env, None))])
    if env.get("SLURM_JOB_ID"):
        alone.notes.append("in a Slurm job but not in an srun step: one process (start ranks with srun)")
    return alone


def _from_tf_config(env: Mapping[str, str]) -> Discovery:
    config = _load_tf_config(env)
    order = [t for t in ("chief", "ps", "worker", "evaluator") if t in config["cluster"]]
    tasks, rank = [], 0
    me = (config["task"]["type"], int(config["task"].get("index", 0)))
    for task_type in order:
        for index, address in enumerate(config["cluster"][task_type]):
            if (task_type, index) == me:
                rank = len(tasks)
            tasks.append(Task(address.rsplit(":", 1)[0], len(tasks), 0))
    return Discovery("tf_config", rank, tasks, notes=["TF_CONFIG given: used as is"])


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
    hosts = expand_nodelist(_slurm_nodelist(env))
    per_node_text = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    size_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    size = env_int(env, size_var) if size_var in env else None
    if per_node_text:
        per_node = expand_tasks_per_node(per_node_text)
    else:
        per_node = [1] * len(hosts) if size is None else _block_split(size or 1, len(hosts))
    if len(per_node) != len(hosts):
        raise UserError(
            f"Slurm: {len(hosts)} hosts in the node list but tasks per node {per_node_text!r} "
            f"names {len(per_node)}"
        )
    uniform = slurm_gpus_per_node(env)
    tasks = _block_tasks(list(zip(hosts, per_node, strict=True)), env, uniform)
    if size is not None and size != len(tasks):
        raise UserError(f"Slurm: {size_var}={size} but tasks per node {per_node_text!r} add up to {len(tasks)}")
    rank = env_int(env, "SLURM_PROCID")
    _check_rank(rank, tasks, "SLURM_PROCID")
    discovery = Discovery("slurm", rank, tasks, job_id=env.get("SLURM_JOB_ID"))
    if "SLURM_LOCALID" in env and env_int(env, "SLURM_LOCALID") != tasks[rank].local_index:
        discovery.notes.append(
            "SLURM_LOCALID differs from block distribution; use srun --distribution=block (the default)"
        )
    return discovery


def _block_split(total: int, nodes: int) -> list[int]:
    """Slurm's block distribution when no per-node count is given: as even as possible, earlier first."""
    base, extra = divmod(total, max(nodes, 1))
    return [base + (1 if i < extra else 0) for i in range(nodes)]


def _from_pbs(env: Mapping[str, str]) -> Discovery:
    slots = group_slots(read_nodefile(env["PBS_NODEFILE"]))
    rank, size = process_rank(env)
    tasks = _block_tasks(slots, env, None)
    if size > len(tasks):
        raise UserError(f"{env['PBS_NODEFILE']}: {size} ranks but the node file holds {len(tasks)} slots")
    discovery = Discovery("pbs", rank, tasks[:size], job_id=env.get("PBS_JOBID"))
    _check_rank(rank, discovery.tasks, "rank")
    if size == 1 and len(tasks) > 1:
        discovery.notes.append(
            f"not started by a launcher: one process (the job has {len(tasks)} slots on {len(slots)} hosts; "
            "start ranks with mpirun/aprun/pbsdsh)"
        )
    local = env.get("OMPI_COMM_WORLD_LOCAL_RANK") or env.get("MPI_LOCALRANKID")
    if local is not None and local.isdigit() and int(local) != tasks[rank].local_index:
        discovery.notes.append(
            f"launcher's local rank {local} differs from the node file's slot order; "
            "map ranks by slot (the mpirun default) or set HPCVISION_DISCOVERY=mpi"
        )
    return discovery


def _from_mpi(env: Mapping[str, str]) -> Discovery:
    rank, size = process_rank(env)
    gathered = _mpi_allgather_hosts(env)
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
    return Discovery("mpi", rank, tasks, notes=["hosts from an mpi4py allgather"])


_MPI_GATHERED: list[tuple[str, int]] | None = None


def _mpi_allgather_hosts(env: Mapping[str, str]) -> list[tuple[str, int]] | None:
    """Every rank's (host name, GPU count), via mpi4py; None when mpi4py is missing.

    Cached: allgather is collective, so a rank that asked twice while its peers asked once would hang.
    """
    global _MPI_GATHERED
    if _MPI_GATHERED is None:
        try:
            from mpi4py import MPI
        except ImportError:
            return None
        _MPI_GATHERED = MPI.COMM_WORLD.allgather((socket.gethostname(), local_gpu_count(env)))
    return _MPI_GATHERED


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


def _check_rank(rank: int, tasks: list[Task], what: str) -> None:
    if not 0 <= rank < len(tasks):
        raise UserError(f"{what} {rank} is outside the {len(tasks)} tasks the scheduler lists")


# ---------------------------------------------------------------------------------------------
# Roles and TF_CONFIG


def base_port(environ: Mapping[str, str] | None = None, job_id: str | None = None) -> int:
    """First port of this job on every host: HPCVISION_BASE_PORT, else derived from the job id, else 2222.

    Deriving from the job id keeps two jobs sharing a node apart; every rank derives the same value.
    """
    env = os.environ if environ is None else environ
    if env.get("HPCVISION_BASE_PORT"):
        port = env_int(env, "HPCVISION_BASE_PORT")
        if not 1024 <= port <= MAX_BASE_PORT:
            raise UserError(f"HPCVISION_BASE_PORT={port}: choose 1024..{MAX_BASE_PORT}")
        return port
    digits = re.match(r"\d+", job_id or "")
    if digits:
        return 20000 + (int(digits.group()) % 600) * PORTS_PER_JOB
    return DEFAULT_BASE_PORT


def assign_roles(tasks: list[Task], num_ps: int = 0) -> list[tuple[str, int]]:
    """(task type, index) per rank. No ps: all workers, worker 0 (rank 0) is chief.

    With ps: parameter servers go to tasks on hosts without GPUs first, one per host before a
    second on any, then the chief (the coordinator does no heavy compute), then workers, GPU hosts first.
    """
    if num_ps < 0:
        raise UserError(f"--ps {num_ps}: must be >= 0")
    if num_ps == 0:
        return [("worker", rank) for rank in range(len(tasks))]
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
    for index, rank in enumerate(sorted(ps_ranks)):
        roles[rank] = ("ps", index)
    roles[chief_rank] = ("chief", 0)
    for index, rank in enumerate(worker_ranks):
        roles[rank] = ("worker", index)
    return roles


def cluster_spec(tasks: list[Task], roles: list[tuple[str, int]], port: int) -> dict[str, list[str]]:
    """{"chief"/"ps"/"worker": [host:port, ...]}; port = base + the task's slot on its host."""
    spec: dict[str, list[str]] = {}
    for task, (task_type, index) in sorted(zip(tasks, roles, strict=True), key=lambda p: p[1]):
        addresses = spec.setdefault(task_type, [])
        assert len(addresses) == index
        addresses.append(f"{task.host}:{port + task.local_index}")
    return spec


def build_tf_config(discovery: Discovery, num_ps: int, port: int) -> dict:
    """The TF_CONFIG for this rank of a discovered job."""
    roles = assign_roles(discovery.tasks, num_ps)
    task_type, index = roles[discovery.rank]
    return {"cluster": cluster_spec(discovery.tasks, roles, port), "task": {"type": task_type, "index": index}}


def visible_gpus(discovery: Discovery, roles: list[tuple[str, int]], environ: Mapping[str, str]) -> str | None:
    """The CUDA_VISIBLE_DEVICES this task should use, or None to leave it as the launcher set it.

    Parameter servers (and the PS chief) get "" so they hold no GPU memory. With one task per GPU
    (as many tasks on the host as GPUs) each task gets the GPU of its slot.
    """
    if "CUDA_VISIBLE_DEVICES" in environ:
        return None  # the scheduler bound GPUs already (e.g. srun --gpu-bind)
    me = discovery.tasks[discovery.rank]
    task_type = roles[discovery.rank][0]
    if task_type == "ps" or (task_type == "chief" and any(r[0] == "ps" for r in roles)):
        return ""
    on_host = sum(1 for t in discovery.tasks if t.host == me.host)
    if me.host_gpus > 1 and on_host == me.host_gpus:
        return str(me.local_index)
    return None


def _load_tf_config(env: Mapping[str, str]) -> dict:
    raw = env.get("TF_CONFIG", "")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise UserError("TF_CONFIG must have 'cluster' and 'task' keys")
    task = config["task"]
    if not isinstance(task, dict) or task.get("type") not in config["cluster"]:
        raise UserError(f"TF_CONFIG: task {task!r} names no job of the cluster")
    return config


def resolve_tf_config(num_ps: int = 0, environ: Mapping[str, str] | None = None) -> dict | None:
    """The TF_CONFIG for this process: an explicit TF_CONFIG wins; None when running alone."""
    env = os.environ if environ is None else environ
    if env.get("TF_CONFIG"):
        return _load_tf_config(env)
    discovery = discover(env)
    for note in discovery.notes:
        log.warning("cluster discovery: %s", note)
    if discovery.size <= 1:
        return None
    return build_tf_config(discovery, num_ps, base_port(env, discovery.job_id))


def _discovered_gpus(discovery: Discovery, num_ps: int, env: Mapping[str, str]) -> str | None:
    return visible_gpus(discovery, assign_roles(discovery.tasks, num_ps if discovery.size > 1 else 0), env)


def cuda_visible_devices(num_ps: int = 0, environ: Mapping[str, str] | None = None) -> str | None:
    """The CUDA_VISIBLE_DEVICES this process should set before importing TensorFlow, or None."""
    env = os.environ if environ is None else environ
    if env.get("TF_CONFIG"):
        return None  # an explicit cluster: the user binds GPUs
    return _discovered_gpus(discover(env), num_ps, env)


def describe(num_ps: int = 0, environ: Mapping[str, str] | None = None, source: str | None = None) -> dict:
    """Everything `hpcvision cluster show` prints, as a JSON-ready dict."""
    env = os.environ if environ is None else environ
    discovery = discover(env, source)
    port = base_port(env, discovery.job_id)
    if discovery.scheduler == "tf_config":
        tf_config = _load_tf_config(env)
        role = tf_config["task"]
    elif discovery.size > 1:
        tf_config = build_tf_config(discovery, num_ps, port)
        role = tf_config["task"]
    else:
        tf_config, role = None, {"type": "worker", "index": 0}
    gpus = None if discovery.scheduler == "tf_config" else _discovered_gpus(discovery, num_ps, env)
    me = discovery.tasks[discovery.rank]
    return {
        "scheduler": discovery.scheduler,
        "job_id": discovery.job_id,
        "rank": discovery.rank,
        "ranks": discovery.size,
        "host": me.host,
        "role": role,
        "hosts": discovery.hosts(),
        "base_port": port,
        "tf_config": tf_config,
        "cuda_visible_devices": gpus,
        "notes": discovery.notes,
    }
