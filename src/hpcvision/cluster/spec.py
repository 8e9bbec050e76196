"""A TensorFlow cluster and its TF_CONFIG: which tasks a cluster has, who is chief, and the variable itself.

The one chief rule: a cluster with parameter servers has a "chief" task of its own (it coordinates and
computes nothing); without them every task is a worker and worker 0 is the chief. `layout` builds
clusters by that rule (discovered jobs, `hpcvision launch`, the distributed-regression tutorial);
`chief_of` reads it back from any cluster, a TF_CONFIG the user wrote included.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping, Sequence

from hpcvision.errors import UserError

# TF_CONFIG's jobs in the order ranks take them when a TF_CONFIG is read back as a job.
TASK_TYPES = ("chief", "ps", "worker", "evaluator")


def layout(workers: int, ps: int) -> list[tuple[str, int]]:
    """(task type, index) of every task of a cluster with `workers` workers and `ps` parameter servers.

    Chief first (only with parameter servers), then the ps, then the workers.
    """
    chief = [("chief", 0)] if ps else []
    return chief + [("ps", i) for i in range(ps)] + [("worker", i) for i in range(workers)]


def chief_of(cluster: Mapping[str, Sequence[str]]) -> tuple[str, int]:
    """The chief's (task type, index): the "chief" task if the cluster has one, else worker 0."""
    return ("chief", 0) if "chief" in cluster else ("worker", 0)


def is_chief(task_type: str, task_index: int, cluster: Mapping[str, Sequence[str]]) -> bool:
    """True for the task that writes checkpoints and summaries (see `chief_of`)."""
    return (task_type, task_index) == chief_of(cluster)


def chief_address(cluster: Mapping[str, Sequence[str]]) -> str | None:
    """host:port of the chief, or None for an empty cluster."""
    task_type, index = chief_of(cluster)
    addresses = cluster.get(task_type, [])
    return addresses[index] if index < len(addresses) else None


def tasks_in_order(cluster: Mapping[str, Sequence[str]]) -> list[tuple[str, int, str]]:
    """(task type, index, address) of every task of a cluster, jobs in `TASK_TYPES` order."""
    return [(task_type, index, address) for task_type in TASK_TYPES if task_type in cluster
            for index, address in enumerate(cluster[task_type])]


def cluster_spec(roles: Sequence[tuple[str, int]], addresses: Sequence[str]) -> dict[str, list[str]]:
    """{"chief"/"ps"/"worker": [host:port, ...]} from each task's (type, index) and its address."""
    spec: dict[str, list[str]] = {}
    for (task_type, index), address in sorted(zip(roles, addresses, strict=True), key=lambda pair: pair[0]):
        in_job = spec.setdefault(task_type, [])
        assert len(in_job) == index, f"roles skip {task_type} {len(in_job)}"  # built by layout/assign_roles
        in_job.append(address)
    return spec


def tf_config(cluster: dict[str, list[str]], task_type: str, task_index: int) -> dict:
    """The TF_CONFIG of one task of `cluster`, as a dict."""
    return {"cluster": cluster, "task": {"type": task_type, "index": task_index}}


def load_tf_config(env: Mapping[str, str]) -> dict:
    """TF_CONFIG from `env`, checked: a UserError naming what is wrong instead of a traceback later."""
    try:
        config = json.loads(env.get("TF_CONFIG", ""))
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise UserError("TF_CONFIG must have 'cluster' and 'task' keys")
    cluster, task = config["cluster"], config["task"]
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise UserError(f"TF_CONFIG: task {task!r} names no job of the cluster")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise UserError(f"TF_CONFIG: job {job!r} must be a list of host:port strings")
    try:
        index = int(task.get("index", 0))
    except (TypeError, ValueError):
        raise UserError(f"TF_CONFIG: task {task!r}: index is not an integer") from None
    if not 0 <= index < len(cluster[task["type"]]):
        raise UserError(f"TF_CONFIG: task {task!r} is not in the cluster")
    return config


def task_of(config: dict) -> tuple[str, int]:
    """(task type, index) of a checked TF_CONFIG (index 0 when it is left out)."""
    return config["task"]["type"], int(config["task"].get("index", 0))


def export_tf_config(config: dict, environ: MutableMapping[str, str] | None = None) -> None:
    """Set TF_CONFIG in `environ` (default: this process's), where TensorFlow's resolvers read it."""
    (os.environ if environ is None else environ)["TF_CONFIG"] = json.dumps(config)
