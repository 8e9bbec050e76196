"""The input service: a tf.data service dispatcher and workers that make training batches for the trainers.

`hpcvision data serve --role dispatcher|worker` runs one server (`serve`); `train --data-service HOST:PORT`
reads its batches through `from_service`. The trainers' dataset is `pipeline.make_dataset` itself (same
files, shuffle, preprocessing, batch): TensorFlow ships its graph to the dispatcher, the workers run it and
stream finished batches back, so decoding leaves the trainers' cores. The workers open the shard paths the
trainer names, so the shards must be on a file system the service nodes see too.

Each epoch is one job of the service in "distributed_epoch" mode: the dispatcher hands each shard file to
one worker, so a pass makes every example once, shared out first-come among the trainers. All-reduce needs
every trainer to take the same number of steps, which first-come does not promise (and what a trainer had
prefetched when the epoch ends is dropped), so a trainer that finds the pass used up goes on into a second
pass of the same job (`repeat`) for its last batches. The job's name carries a number the trainers of one
attempt agree on (`job_name`): a restarted run starts fresh passes instead of joining used-up ones.

When the servers stop: the dispatcher watches the trainers' chief (`--trainer HOST:PORT`, the address the
chief's TensorFlow server listens on while it trains) and exits once it has come and gone, as our
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

from hpcvision.errors import UserError

log = logging.getLogger(__name__)

ROLES = ("dispatcher", "worker")
# How long a trainer waits for the dispatcher's port before one clear line (job scripts start all at once).
DISPATCHER_WAIT_S = 300.0
PROCESSING_MODE = "distributed_epoch"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


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


def check_serve_options(role: str, dispatcher: str | None, trainer: str | None) -> None:
    """UserError for options `data serve` cannot run with (checked before TensorFlow is imported)."""
    if role == "worker" and not dispatcher:
        raise UserError("data serve --role worker needs --dispatcher HOST:PORT")
    if role == "dispatcher" and dispatcher:
        raise UserError("data serve --dispatcher is for --role worker (the dispatcher it registers with)")
    if role == "worker" and trainer:
        raise UserError("data serve --trainer is for --role dispatcher (a worker stops with its dispatcher)")
    if dispatcher:
        parse_address(dispatcher, "--dispatcher")
    if trainer:
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
    signalled without one) or "worker" (registers with `dispatcher` HOST:PORT, stops after it is gone).
    `port` 0 takes a free one.
    """
    from hpcvision.train.strategy import CHIEF_START_TIMEOUT_S, wait_for_chief_exit

    check_serve_options(role, dispatcher, trainer)
    timeout = CHIEF_START_TIMEOUT_S if start_timeout_s is None else start_timeout_s
    host = host or default_host(dispatcher)
    if role == "dispatcher":
        watched = trainer and address(trainer, "--trainer")
        server = _start_dispatcher(port)
    else:
        watched = address(dispatcher, "--dispatcher")
        if not _wait_for_port(watched, timeout):
            log.error("worker: no dispatcher answers at %s after %.0f s", watched, timeout)
            return 1
        server = _start_worker(watched, port, host)
    if watched:  # before the line below: a job script may signal as soon as it reads it
        signal.signal(signal.SIGTERM, lambda signum, _frame: _on_sigterm(signum, watched))
    here = f"{host}:{_bound_port(server)}"
    print(f"data serve: {role} at {here}" + (f", until {watched} is gone" if watched else ", until signalled"),
          flush=True)
    if not watched:
        server.join()
        return 0
    code = wait_for_chief_exit(watched, start_timeout_s=timeout)
    print(f"data serve: {role} at {here}: {watched} is gone; exiting", flush=True)
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
