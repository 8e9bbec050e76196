"""The input service's plan (`data serve --role auto`, `train --data-service auto`), decided once from discovery.

`plan_service` finds the ranks of the service's launch exactly as train finds its own (`discovery.discover`;
a mixed job starts one per CPU node) and places them: rank 0 runs the dispatcher at its host and the job's
base port, and a worker beside it in the same process (its node's cores serve too, without a second
launch); every rank's worker listens on base + 1 + its slot on its host and registers with rank 0. The
dispatcher outlives the trainers' chief: worker 0 of the all-reduce trainers, who run on the GPU hosts alone
(slot 0: the base port), so the first host with GPUs in HPCVISION_GPUS; without one it runs until signalled.
`dispatcher_address` is the trainers' side: the first GPU-less host in HPCVISION_GPUS, at the base port.
A process alone on this machine (no scheduler, or `hpcvision launch`'s 127.0.0.1) does both on 127.0.0.1.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from hpcvision.cluster.discovery import Discovery, HostGather, discover, mpi_allgather_hosts
from hpcvision.cluster.formats import gpu_overrides
from hpcvision.cluster.plan import base_port
from hpcvision.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
NO_TRAINER = "none"  # --trainer none: the dispatcher runs until signalled


@dataclass(frozen=True)
class ServicePlan:
    """This rank's part of the input service: what it runs, where it is reached, what it outlives."""

    found: Discovery
    role: str  # "dispatcher" (rank 0, with a worker in the same process) or "worker"
    host: str  # the name this rank's servers are reached at
    dispatcher: str  # HOST:PORT of rank 0's dispatcher (this rank's own when it is rank 0)
    worker_port: int
    trainer: str | None  # the dispatcher's: the trainers' chief it outlives; None: until signalled
    why: str  # how `trainer` was decided
    notes: tuple[str, ...] = ()

    @property
    def port(self) -> int:
        """The dispatcher's port: the job's base port."""
        return int(self.dispatcher.rsplit(":", 1)[1])

    def describe(self) -> dict:
        """What `data serve --dry-run` prints, as a JSON-ready dict."""
        found = self.found
        return {"scheduler": found.scheduler, "job_id": found.job_id, "rank": found.rank, "ranks": found.size,
                "role": self.role, "worker": f"{self.host}:{self.worker_port}", "dispatcher": self.dispatcher,
                "trainer": self.trainer if self.role == "dispatcher" else None, "why": self.why,
                "hosts": found.hosts(), "notes": [*found.notes, *self.notes]}


def plan_service(environ: Mapping[str, str] | None = None, trainer: str | None = None, source: str | None = None,
                 gather_hosts: HostGather = mpi_allgather_hosts) -> ServicePlan:
    """This rank's plan; `trainer` (HOST:PORT, or "none") replaces the chief the plan would watch."""
    env = os.environ if environ is None else environ
    found = discover(env, source, gather_hosts)
    if found.tf_config is not None:
        raise UserError("data serve --role auto: TF_CONFIG is set (a trainers' cluster, not the service's): "
                        "unset it, or give --role dispatcher|worker")
    port = base_port(env, found.job_id)
    local = on_this_machine(found, env)
    me = found.tasks[found.rank]
    host = "127.0.0.1" if local else me.host
    dispatcher = f"{'127.0.0.1' if local else found.tasks[0].host}:{port}"
    if found.rank > 0:
        return ServicePlan(found, "worker", host, dispatcher, port + 1 + me.local_index, None,
                           f"rank {found.rank}: a worker of rank 0's dispatcher; it stops once that is gone")
    watched, why = _trainer(env, port, trainer)
    return ServicePlan(found, "dispatcher", host, dispatcher, port + 1 + me.local_index, watched, why,
                       _mismatch(env, found, dispatcher, local))


def dispatcher_address(found: Discovery, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(HOST:PORT, why) of the dispatcher `train --data-service auto` reads from: the first GPU-less host in
    HPCVISION_GPUS at the base port, 127.0.0.1 on this machine alone; UserError when neither is known."""
    env = os.environ if environ is None else environ
    port = base_port(env, found.job_id)
    cpu_hosts = hosts_with_gpus(env, False)
    if cpu_hosts:
        return f"{cpu_hosts[0]}:{port}", "the first GPU-less host in HPCVISION_GPUS, at the base port"
    if on_this_machine(found, env):
        return f"127.0.0.1:{port}", "alone on this machine: a lone `data serve` at the base port"
    raise UserError("--data-service auto: HPCVISION_GPUS names no GPU-less host (host=0) to find the dispatcher "
                    "on; give --data-service HOST:PORT (job scripts with --cpu-nodes set HPCVISION_GPUS)")


def on_this_machine(found: Discovery, environ: Mapping[str, str]) -> bool:
    """No job around this process (no scheduler, outside a Slurm allocation), or a cluster all on 127.0.0.1."""
    if found.scheduler == "local":
        return not environ.get("SLURM_JOB_ID")
    return all(task.host in LOCAL_HOSTS for task in found.tasks)


def hosts_with_gpus(env: Mapping[str, str], gpus: bool) -> list[str]:
    """The hosts HPCVISION_GPUS gives GPUs (`gpus`) or none, in its order (a mixed job: CPU nodes first)."""
    return [host for host, count in gpu_overrides(env)[1].items() if (count > 0) == gpus]


def _trainer(env: Mapping[str, str], port: int, given: str | None) -> tuple[str | None, str]:
    """(the trainers' chief the dispatcher outlives or None, why)."""
    if given == NO_TRAINER:
        return None, "--trainer none: runs until signalled"
    if given:
        return given, "the trainers' chief given by --trainer"
    gpu_hosts = hosts_with_gpus(env, True)
    if gpu_hosts:
        return (f"{gpu_hosts[0]}:{port}", "the trainers' chief (worker 0: slot 0 of the first GPU host in "
                "HPCVISION_GPUS, at the base port)")
    return None, "HPCVISION_GPUS names no GPU host (host=N), so no trainers' chief to watch: runs until signalled"


def _mismatch(env: Mapping[str, str], found: Discovery, dispatcher: str, local: bool) -> tuple[str, ...]:
    """A note when `train --data-service auto` would look for the dispatcher elsewhere."""
    cpu_hosts = hosts_with_gpus(env, False)
    if local or not cpu_hosts or cpu_hosts[0] == found.tasks[0].host:
        return ()
    return (f"the dispatcher runs on {found.tasks[0].host}, but `train --data-service auto` looks for it on "
            f"{cpu_hosts[0]} (the first GPU-less host in HPCVISION_GPUS): give the trainers --data-service "
            f"{dispatcher}",)
