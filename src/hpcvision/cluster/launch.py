"""`hpcvision launch`: a training cluster of local processes on 127.0.0.1.

Each process gets its own TF_CONFIG (distinct free ports) and one intra-op thread by default, its
output lines are prefixed with its role (`[worker0] ...`), and if one process fails the others are
stopped (SIGTERM, then SIGKILL after a grace period) and launch exits non-zero. SIGINT/SIGTERM/SIGUSR1
sent to launch are forwarded, so a job's walltime signal reaches every trainer. On Linux each process
dies with launch (a parent-death signal), so a `kill -9` of launch leaves no trainer running unwatched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from hpcvision.cluster.spec import cluster_spec, export_tf_config, layout, tf_config

GRACE_S = 10.0  # between SIGTERM and SIGKILL when stopping the others

# Run before each process's own command: ask Linux to SIGKILL it when launch dies (prctl
# PR_SET_PDEATHSIG = 1, kept across exec), then exec the command in place, so its pid stays the one
# launch knows. Not Popen's preexec_fn: that is unsafe while launch's reader threads run. The signal
# comes when the thread that started the process ends: launch_local's, the main thread (it sets signal
# handlers, so it must be). If launch died before the prctl, the process has a new parent and stops
# here. SIGKILL, not SIGTERM: with launch gone nobody reads the output or stops a peer that hangs;
# resuming from the last checkpoint is the normal way on.
DIE_WITH_LAUNCH = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:
    print("launch: no parent-death signal:", os.strerror(ctypes.get_errno()), file=sys.stderr, flush=True)
if os.getppid() != int(sys.argv[1]):
    sys.exit("launch: exited before this process started")
os.execvp(sys.argv[2], sys.argv[2:])
"""


@dataclass
class Task:
    role: str  # chief | worker | ps
    index: int
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return "chief" if self.role == "chief" else f"{self.role}{self.index}"


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held open while choosing, so no repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_cluster(workers: int, ps: int) -> tuple[dict, list[Task]]:
    """The cluster spec and tasks (`spec.layout`): workers only (all-reduce) or chief + ps + workers.

    `workers` >= 1 and `ps` >= 0, as `LaunchConfig` declares them.
    """
    roles = layout(workers, ps)
    cluster = cluster_spec(roles, [f"127.0.0.1:{port}" for port in free_ports(len(roles))])
    return cluster, [Task(role, index) for role, index in roles]


def train_command(train_args: list[str]) -> list[str]:
    """The command line of one trainer process."""
    return [sys.executable, "-m", "hpcvision", "train", *train_args]


def dies_with_launch(argv: list[str]) -> list[str]:
    """`argv` started so that Linux kills it when this process dies; elsewhere `argv` as it is."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-c", DIE_WITH_LAUNCH, str(os.getpid()), *argv]


def launch_local(train_args: list[str], *, workers: int, ps: int = 0, threads: int = 1,
                 command: list[str] | None = None, grace_s: float | None = None) -> int:
    """Run the cluster to completion; 0 if every process exited 0, else the first failure's code."""
    cluster, tasks = local_cluster(workers, ps)
    argv = dies_with_launch(command or train_command(train_args))
    lock = threading.Lock()
    readers = []
    for task in tasks:
        env = dict(os.environ)
        export_tf_config(tf_config(cluster, task.role, task.index), env)
        if threads > 0:
            env["TF_NUM_INTRAOP_THREADS"] = str(threads)
        # A session of its own: a terminal's Ctrl-C reaches launch only, which forwards it once.
        task.process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        reader = threading.Thread(target=_prefix_lines, args=(task, lock), daemon=True)
        reader.start()
        readers.append(reader)
    _say(lock, f"started {', '.join(f'{t.name} (pid {t.process.pid})' for t in tasks)} on 127.0.0.1")

    previous = {sig: signal.signal(sig, lambda signum, _frame: _forward(tasks, signum))
                for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        code = _wait(tasks, lock, GRACE_S if grace_s is None else grace_s)
    except KeyboardInterrupt:
        _forward(tasks, signal.SIGINT)
        _stop_all(tasks, lock, GRACE_S if grace_s is None else grace_s)
        code = 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for reader in readers:
        reader.join(timeout=5)
    return code


def _wait(tasks: list[Task], lock: threading.Lock, grace_s: float) -> int:
    """Poll until all exited 0 (-> 0) or one failed (-> stop the rest, its code)."""
    while True:
        codes = {t.name: t.process.poll() for t in tasks}
        failed = [(name, code) for name, code in codes.items() if code not in (None, 0)]
        if failed:
            name, code = failed[0]
            _say(lock, f"{name} exited with code {code}; stopping the others")
            _stop_all(tasks, lock, grace_s)
            return code if code > 0 else 128 - code
        if all(code == 0 for code in codes.values()):
            _say(lock, "all processes exited 0")
            return 0
        time.sleep(0.2)


def _forward(tasks: list[Task], sig: int) -> None:
    for task in tasks:
        if task.process.poll() is None:
            task.process.send_signal(sig)


def _stop_all(tasks: list[Task], lock: threading.Lock, grace_s: float) -> None:
    """SIGTERM every live process, SIGKILL those still alive after the grace period (by pid)."""
    _forward(tasks, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for task in tasks:
        try:
            task.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(lock, f"{task.name} did not stop after SIGTERM; killing pid {task.process.pid}")
            task.process.kill()
            task.process.wait()


def _prefix_lines(task: Task, lock: threading.Lock) -> None:
    for raw in iter(task.process.stdout.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            print(f"[{task.name}] {line}", flush=True)
    task.process.stdout.close()


def _say(lock: threading.Lock, message: str) -> None:
    with lock:
        print(f"[launch] {message}", flush=True)
