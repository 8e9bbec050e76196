"""The input service: a tf.data service dispatcher and workers that make training batches for the trainers.

`hpcvision data serve` runs this rank's part of the service as the cluster plan places it (`--role auto`,
`serve_planned`; `hpcvision.cluster.service_plan`: rank 0 a dispatcher with a worker in the same process,
the other ranks a worker each), or one server as told (`--role dispatcher|worker`, `serve`). `train
--data-service HOST:PORT` (or auto: the same plan's dispatcher) reads its batches through `from_service`.
The trainers' dataset is `pipeline.make_dataset` itself (same files, shuffle, preprocessing, batch):
TensorFlow ships its graph to the dispatcher, the workers run it and stream finished batches back, so
decoding leaves the trainers' cores. The workers open the shard paths the trainer names, so the shards
must be on a file system the service nodes see too.

Each epoch is one job of the service in "distributed_epoch" mode: the dispatcher hands each shard file to
one worker, so a pass makes every example once, shared out first-come among the trainers. All-reduce needs
every trainer to take the same number of steps, which first-come does not promise (and what a trainer had
prefetched when the epoch ends is dropped), so a trainer that finds the pass used up goes on into a second
pass of the same job (`repeat`) for its last batches. The job's name carries a number the trainers of one
attempt agree on (`job_name`): a restarted run starts fresh passes instead of joining used-up ones.

When the servers stop: the dispatcher watches the trainers' chief (the address the chief's TensorFlow
server listens on while it trains: from the plan, or `--trainer HOST:PORT`) and exits once it has come and gone, as our
parameter servers do (`train.strategy.wait_for_chief_exit`); each worker watches its dispatcher the same
way. A port is alive exactly as long as its process, however it ends (done, killed, walltime); a "done"
file would need the trainer to reach its last line and could be left stale for the next run. SIGTERM
while what they watch is up is ignored: the scheduler sends it to every process at walltime, and trainers
that save on it still need their next batch; otherwise it ends them (a job script's clean-up after
trainers that never started).

TensorFlow's data-service servers listen on every interface (0.0.0.0, fixed in its C++ server; neither
DispatcherConfig nor WorkerConfig takes a bind address): `--host` is the address they are reached at.
"""

from __future__ import annotations

import logging
import signal
import socket
import time

from hpcvision.cluster.service_plan import LOCAL_HOSTS, NO_TRAINER, ServicePlan
from hpcvision.errors import UserError

log = logging.getLogger(__name__)

ROLES = ("auto", "dispatcher", "worker")
# How long a trainer waits for the dispatcher's port before one clear line (job scripts start all at once).
DISPATCHER_WAIT_S = 300.0
PROCESSING_MODE = "distributed_epoch"


def parse_address(text: str, what: str = "--data-service") -> tuple[str, int]:
    """(host, port) of 'HOST:PORT' (or 'grpc://HOST:PORT'); UserError naming `what` otherwise."""
    host, _, port = text.removeprefix("grpc://").rpartition(":")
    if not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5050")
    return host, int(port)


def address(text: str, what: str = "--data-service") -> str:
    """'HOST:PORT' of a checked address (any grpc:// prefix dropped)."""
    host, port = parse_address(text, what)
    return f"{host}:{port}"


def check_serve_options(role: str, dispatcher: str | None, trainer: str | None, *, port: int | None = None,
                        host: str | None = None, dry_run: bool = False) -> None:
    """UserError for options `data serve` cannot run with (checked before TensorFlow is imported)."""
    if role == "auto" and (dispatcher or port is not None or host):
        raise UserError("data serve --role auto takes --dispatcher, --port and --host from the cluster plan (ports "
                        "from HPCVISION_BASE_PORT); give --role dispatcher|worker to set them yourself")
    if role != "auto" and dry_run:
        raise UserError("data serve --dry-run prints the plan of --role auto (the default)")
    if role == "worker" and not dispatcher:
        raise UserError("data serve --role worker needs --dispatcher HOST:PORT")
    if role == "dispatcher" and dispatcher:
        raise UserError("data serve --dispatcher is for --role worker (the dispatcher it registers with)")
    if role == "worker" and trainer:
        raise UserError("data serve --trainer is for --role dispatcher (a worker stops with its dispatcher)")
    if dispatcher:
        parse_address(dispatcher, "--dispatcher")
    if trainer and trainer != NO_TRAINER:
        parse_address(trainer, "--trainer")


def default_host(dispatcher: str | None) -> str:
    """Where this server is reached when --host is not given: 127.0.0.1 beside a local dispatcher (or as the
    dispatcher), else this machine's name (a worker on another node must not tell trainers 'localhost')."""
    if dispatcher and parse_address(dispatcher, "--dispatcher")[0] not in LOCAL_HOSTS:
        return socket.gethostname()
    return "127.0.0.1"


def serve(role: str, dispatcher: str | None = None, port: int = 0, *, host: str | None = None,
          trainer: str | None = None, start_timeout_s: float | None = None) -> int:
    """Run one input-service server until what it watches is gone; the exit code (0, or 1 if it never came).

    `role` is "dispatcher" (stops after the trainer chief at `trainer` has come and gone; runs until
    signalled without one, or with "none") or "worker" (registers with `dispatcher` HOST:PORT, stops after it
    is gone). `port` 0 takes a free one.
    """
    check_serve_options(role, dispatcher, trainer)
    host = host or default_host(dispatcher)
    if role == "dispatcher":
        watched = address(trainer, "--trainer") if trainer and trainer != NO_TRAINER else None
        return _run_dispatcher(port, host, watched, _timeout(start_timeout_s))
    return _run_worker(address(dispatcher, "--dispatcher"), port, host, _timeout(start_timeout_s))


def serve_planned(plan: ServicePlan, start_timeout_s: float | None = None) -> int:
    """Run this rank's part of the planned service (`--role auto`): rank 0 the dispatcher and a worker in one
    process, the others a worker each; the exit code as `serve`'s."""
    found = plan.found
    for note in (*found.notes, *plan.notes):
        log.warning("data serve: %s", note)
    print(f"data serve: rank {found.rank} of {found.size} ({found.scheduler}): {plan.role}; {plan.why}", flush=True)
    if plan.role == "dispatcher":
        return _run_dispatcher(plan.port, plan.host, plan.trainer, _timeout(start_timeout_s),
                               worker_port=plan.worker_port)
    return _run_worker(plan.dispatcher, plan.worker_port, plan.host, _timeout(start_timeout_s))


def _timeout(start_timeout_s: float | None) -> float:
    """How long a server waits for what it watches to appear (the parameter servers' default)."""
    from hpcvision.train.strategy import CHIEF_START_TIMEOUT_S

    return CHIEF_START_TIMEOUT_S if start_timeout_s is None else start_timeout_s


def _run_dispatcher(port: int, host: str, watched: str | None, timeout: float,
                    worker_port: int | None = None) -> int:
    """A dispatcher (and a worker beside it when `worker_port` is given) until `watched` is gone."""
    server = _start_dispatcher(port)
    servers, what = [server], f"dispatcher at {host}:{_bound_port(server)}"
    if worker_port is not None:  # registers over loopback; tells the trainers `host`
        worker = _start_worker(f"127.0.0.1:{_bound_port(server)}", worker_port, host)
        servers, what = [worker, server], f"{what} with a worker at {host}:{_bound_port(worker)}"
    return _serve_until_gone(servers, what, watched, timeout)


def _run_worker(dispatcher: str, port: int, host: str, timeout: float) -> int:
    """A worker of `dispatcher` (once it answers) until the dispatcher is gone; 1 if it never answered."""
    if not _wait_for_port(dispatcher, timeout):
        log.error("worker: no dispatcher answers at %s after %.0f s", dispatcher, timeout)
        return 1
    server = _start_worker(dispatcher, port, host)
    return _serve_until_gone([server], f"worker at {host}:{_bound_port(server)}", dispatcher, timeout)


def _serve_until_gone(servers: list, what: str, watched: str | None, timeout: float) -> int:
    """Serve until `watched` has come and gone (until signalled without one), then stop `servers` in order."""
    from hpcvision.train.strategy import wait_for_chief_exit

    if watched:  # before the line below: a job script may signal as soon as it reads it
        signal.signal(signal.SIGTERM, lambda signum, _frame: _on_sigterm(signum, watched))
    print(f"data serve: {what}" + (f", until {watched} is gone" if watched else ", until signalled"), flush=True)
    if not watched:
        servers[-1].join()
        return 0
    code = wait_for_chief_exit(watched, start_timeout_s=timeout)
    print(f"data serve: {what}: {watched} is gone; exiting", flush=True)
    for server in servers:
        server.stop()
    return code


def _on_sigterm(signum: int, watched: str) -> None:
    """Keep serving while what this server watches runs (trainers that save on SIGTERM still need their next
    batch); exit now when it is not up (never came, or already gone: nothing left to serve)."""
    from hpcvision.train.strategy import accepts_connections

    if accepts_connections(*parse_address(watched)):
        log.info("%s: serving on until %s is gone (the trainers save first)", signal.Signals(signum).name, watched)
        return
    raise SystemExit(128 + signum)


def _start_dispatcher(port: int):
    import tensorflow as tf

    service = tf.data.experimental.service
    return service.DispatchServer(service.DispatcherConfig(port=port, protocol="grpc"))


def _start_worker(dispatcher: str, port: int, host: str):
    import tensorflow as tf

    service = tf.data.experimental.service
    # %port% is replaced by the bound port: the address the dispatcher tells trainers to fetch from.
    return service.WorkerServer(service.WorkerConfig(
        dispatcher_address=dispatcher, worker_address=f"{host}:%port%", port=port, protocol="grpc"))


def _bound_port(server) -> int:
    """The port a DispatchServer (its `target`) or WorkerServer (its private `_address`, no public one) got."""
    bound = getattr(server, "target", None) or server._address
    return int(bound.rsplit(":", 1)[1])


def _wait_for_port(where: str, timeout_s: float) -> bool:
    """True once HOST:PORT accepts connections, False after `timeout_s`."""
    from hpcvision.train.strategy import accepts_connections

    host, port = parse_address(where)
    deadline = time.monotonic() + timeout_s
    while not accepts_connections(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True


def wait_for_dispatcher(where: str, timeout_s: float = DISPATCHER_WAIT_S) -> None:
    """Return once the dispatcher at HOST:PORT accepts connections; UserError after `timeout_s` (not a hang)."""
    if not _wait_for_port(where, timeout_s):
        raise UserError(f"--data-service {where}: no dispatcher answers there after {timeout_s:.0f} s; start "
                        f"one with: hpcvision data serve --role dispatcher --port {parse_address(where)[1]}")


def job_name(attempt: int, epoch: int) -> str:
    """The service job the trainers of one attempt share for epoch `epoch`. `attempt` is a random number the
    trainers agreed on at start, so a restart (same step, same epoch) never joins a pass already used up:
    the dispatcher gives a second dataset under a used name the first one's elements, without an error."""
    return f"hpcvision-{attempt:06x}-epoch{epoch}"


def one_pass(dataset, where: str, name: str):
    """`dataset` made by the service at `where` as job `name`: one pass, each element once, shared out
    first-come among every consumer that names the same job.

    Uncompressed: the trainer's cores are what the service saves, and decompressing costs them.
    """
    import tensorflow as tf

    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=PROCESSING_MODE, service=f"grpc://{address(where)}", job_name=name, compression=None))


def from_service(dataset, where: str, name: str):
    """`dataset` (one pass, finite) from the service, repeated on the trainer: a trainer that finds this
    epoch's pass used up before its last step goes on into the job's next pass (see the module's docstring)."""
    import tensorflow as tf

    return one_pass(dataset, where, name).repeat().prefetch(tf.data.AUTOTUNE)
