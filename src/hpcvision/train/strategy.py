"""Which distribution strategy runs this process, and what role it plays in the cluster.

The choice is made in ONE place (`choose_kind`), from the `--strategy` flag and the process's
`hpcvision.cluster.plan.ClusterPlan` (TF_CONFIG, PBS, Slurm or MPI, worked out once by `train`):

    auto -> parameter-server  if the cluster has "ps" tasks
         -> multi-worker      if it has more than one worker (chief counts as a worker)
         -> mirrored          if this machine has more than one GPU
         -> one               otherwise (OneDeviceStrategy on GPU 0 or the CPU)

In parameter-server mode only the chief runs the training loop; "ps" and "worker" tasks run a
`tf.distribute.Server` and exit 0 by themselves once the chief is gone (see `serve_until_chief_exits`).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

from hpcvision.cluster.plan import ClusterPlan
from hpcvision.cluster.spec import export_tf_config
from hpcvision.errors import UserError

log = logging.getLogger(__name__)

# A server whose chief never appears gives up after this long (a chief that failed to start).
CHIEF_START_TIMEOUT_S = 900.0
# The chief counts as gone after this many failed connection attempts in a row, one per second.
CHIEF_GONE_AFTER_MISSES = 3


@dataclass(frozen=True)
class Role:
    """This process's place in the training cluster."""

    kind: str  # one | mirrored | multi-worker | parameter-server
    task_type: str | None  # chief | worker | ps | None (alone)
    task_index: int
    num_workers: int  # processes that compute gradients
    is_chief: bool  # writes checkpoints, summaries, run.yaml
    tf_config: dict | None
    chief: str | None = None  # host:port of the chief task (ps and workers wait for it to finish)

    @property
    def name(self) -> str:
        return f"{self.task_type}{self.task_index}" if self.task_type else "local"

    @property
    def worker_index(self) -> int:
        """Position among the gradient-computing processes (chief first when there is one)."""
        if self.kind == "multi-worker" and self.task_type == "worker" and "chief" in self.tf_config["cluster"]:
            return self.task_index + 1
        return self.task_index if self.task_type == "worker" else 0

    @property
    def runs_server_only(self) -> bool:
        return self.kind == "parameter-server" and self.task_type in ("ps", "worker")


def choose_kind(flag: str, tf_config: dict | None, num_gpus: int) -> str:
    """The strategy kind for `--strategy flag` in this cluster (the one place the choice is made)."""
    cluster = (tf_config or {}).get("cluster", {})
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    if flag == "auto":
        if cluster.get("ps") and not cluster.get("chief"):
            # Every task would serve and none train (ps and workers wait for a chief).
            raise UserError("the cluster has 'ps' tasks but no 'chief': parameter-server training needs one")
        if cluster.get("ps"):
            return "parameter-server"
        if workers > 1:
            return "multi-worker"
        return "mirrored" if num_gpus > 1 else "one"
    if flag == "parameter-server" and not (cluster.get("ps") and cluster.get("chief")):
        raise UserError("--strategy parameter-server needs a cluster with 'chief' and 'ps' tasks "
                        "(TF_CONFIG, or `hpcvision launch --workers N --ps M`)")
    return flag


def resolve_role(plan: ClusterPlan, strategy_flag: str, num_gpus: int) -> Role:
    """This process's role: the strategy for `--strategy` on this machine, and its place in the plan's cluster."""
    kind = choose_kind(strategy_flag, plan.tf_config, num_gpus)
    if not plan.tf_config or kind in ("one", "mirrored"):
        return Role(kind, None, 0, 1, True, None)
    cluster = plan.tf_config["cluster"]
    if kind == "parameter-server":
        num_workers = len(cluster.get("worker", []))
    else:
        num_workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return Role(kind, plan.task_type, plan.task_index, num_workers, plan.is_chief, plan.tf_config, plan.chief)


def make_strategy(role: Role, collective_timeout_s: float = 600.0):
    """Build the tf.distribute strategy for `role` (call before any other TensorFlow op)."""
    import tensorflow as tf

    if role.tf_config is not None:
        # The plan may have built the cluster from PBS/Slurm/MPI: TF reads it from the environment.
        export_tf_config(role.tf_config)
    if role.kind == "one":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if role.kind == "mirrored":
        # Without GPUs, every logical CPU device (tf.config.set_logical_device_configuration): MirroredStrategy
        # alone would take CPU:0 only. This is how tests run several replicas in one process.
        cpus = [] if tf.config.list_logical_devices("GPU") else tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in cpus] if len(cpus) > 1 else None)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if role.kind == "multi-worker":
        # A timeout turns a dead peer into an error instead of an endless hang in all-reduce.
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s)
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    return tf.distribute.experimental.ParameterServerStrategy(resolver)


def serve_until_chief_exits(role: Role) -> int:
    """Run this ps/worker task's TF server until the chief has come and gone; the exit code.

    Why poll the chief's port: the chief's coordinator listens on its cluster address for as long as
    it runs, whatever way it ends (done, killed, walltime), so the server never outlives it. A "done"
    file would need a shared file system and leave a stale marker for the next restart to trip on.
    """
    import tensorflow as tf

    export_tf_config(role.tf_config)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(
        resolver.cluster_spec(), job_name=role.task_type, task_index=role.task_index, protocol="grpc", start=True
    )
    log.info("%s: serving at %s until the chief %s finishes", role.name, server.target, role.chief)
    code = wait_for_chief_exit(role.chief)
    log.info("%s: chief %s is gone; server exits", role.name, role.chief)
    return code


def wait_for_chief_exit(address: str, *, start_timeout_s: float = CHIEF_START_TIMEOUT_S,
                        misses: int = CHIEF_GONE_AFTER_MISSES, poll_s: float = 1.0) -> int:
    """Block until `host:port` has accepted connections and then stopped; 0, or 1 if it never came."""
    host, port = address.rsplit(":", 1)
    started, seen, missed = time.monotonic(), False, 0
    while True:
        if accepts_connections(host, int(port)):
            seen, missed = True, 0
        elif seen:
            missed += 1
            if missed >= misses:
                return 0
        elif time.monotonic() - started > start_timeout_s:
            log.error("chief %s did not start within %.0f s", address, start_timeout_s)
            return 1
        time.sleep(poll_s)


def accepts_connections(host: str, port: int) -> bool:
    """True if HOST:PORT accepts a TCP connection now (the one probe for watched servers: chief, dispatcher)."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False
