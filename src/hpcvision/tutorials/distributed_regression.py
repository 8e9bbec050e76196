"""Distributed regression: one parameter server and two workers on this machine recover m and b.

Lesson 6 of the course, its "distributed sanity check". The straight-line fit of lesson 2, trained the
way the course trained ImageNet on Blue Waters: the variables m and b live on a parameter server (ps);
workers each read their own stream of data, compute gradients and push updates to the ps without
waiting for each other (asynchronous training); a coordinator (the chief) hands out the steps.

Every task is its own process with its own TF_CONFIG, all on 127.0.0.1:

    chief     runs ParameterServerStrategy + ClusterCoordinator and the training loop
    ps 0      a tf.distribute.Server holding m and b
    worker 0  a tf.distribute.Server running steps
    worker 1  a tf.distribute.Server running steps

Keras' `model.fit` does not work with ParameterServerStrategy in Keras 3, so the loop is written out:
`coordinator.schedule(step, args=(per-worker iterator,))`, then `coordinator.join()`. The tutorial
starts every process itself and stops each by its pid when done, also on errors or Ctrl-C.

Run:
    hpcvision tutorial distributed-regression --out /tmp/distributed [--steps 600]

Writes convergence.png, fit.png, logs/<task>.log (each process's output) and results.json (the
recovered m and b, the least-squares values on the same data, steps and time).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hpcvision.cluster.launch import free_ports  # the same helper `hpcvision launch` uses
from hpcvision.cluster.spec import cluster_spec, layout, tf_config  # and the same cluster rules
from hpcvision.config import bounded
from hpcvision.errors import UserError
from hpcvision.tutorials._common import output_dir, parser_for, pyplot, run_script, save_figure, write_results

"""
## The data: the same line as lesson 2, y = 0.3 x - 3 plus noise
"""


def make_data(n: int, m: float, b: float, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points of y = m*x + b + N(0, noise^2), x uniform on [-5, 5] (float32, as TensorFlow trains)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5.0, 5.0, n)
    y = m * x + b + rng.normal(0.0, noise, n)
    return x.astype(np.float32), y.astype(np.float32)


"""
## The cluster: free ports on 127.0.0.1 and one TF_CONFIG per process

TF_CONFIG is the JSON every TensorFlow process reads to learn the whole cluster and its own place in it:
`{"cluster": {"chief": [...], "ps": [...], "worker": [...]}, "task": {"type": "worker", "index": 1}}`.
With parameter servers the chief is a task of its own that hands out the steps: `layout` is that
rule, the same one `hpcvision launch` and cluster discovery follow.
"""


def make_cluster(workers: int) -> dict[str, list[str]]:
    """The cluster spec: one chief, one ps and `workers` workers, each on its own loopback port."""
    tasks = layout(workers, ps=1)  # [("chief", 0), ("ps", 0), ("worker", 0), ("worker", 1), ...]
    ports = free_ports(len(tasks))
    return cluster_spec(tasks, [f"127.0.0.1:{p}" for p in ports])


"""
## What the ps and the workers run: a server, until we stop it

`tf.distribute.Server` starts the gRPC service that lets the chief place variables and run functions
in this process. One thread each keeps the two cores of a laptop shared fairly.
"""


def serve() -> None:
    """Entry point of a ps or worker process: start the server from TF_CONFIG and block."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(
        resolver.cluster_spec(), job_name=resolver.task_type, task_index=resolver.task_id, protocol="grpc"
    )
    print(f"{resolver.task_type} {resolver.task_id} serving at {server.target}", flush=True)
    server.join()


def wait_for_ports(addresses: list[str], timeout: float) -> None:
    """Block until every host:port accepts a TCP connection (the servers are up)."""
    deadline = time.monotonic() + timeout
    for address in addresses:
        host, port = address.rsplit(":", 1)
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{address} did not come up within {timeout:.0f} s") from None
                time.sleep(0.2)


"""
## What the chief runs: the coordinated training loop

Variables created under `strategy.scope()` are placed on the ps. `step` runs on whichever worker is
free; its `next(iterator)` reads that worker's own copy of the dataset. Each step applies plain
gradient descent to m and b on the ps (with the step size cut tenfold for the last third of the steps). Our own step counter is a variable too (Keras' optimizer
counter loses increments under asynchronous updates).
"""


def train_as_chief(settings: dict) -> dict:
    """Entry point of the chief: train m, b on the cluster in TF_CONFIG; return the trajectory."""
    import tensorflow as tf

    cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
    wait_for_ports(cluster["ps"] + cluster["worker"], timeout=settings["timeout"])
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

    with strategy.scope():
        m = tf.Variable(0.0, name="m")
        b = tf.Variable(0.0, name="b")
        steps_done = tf.Variable(0, dtype=tf.int64, name="steps_done")

    x, y = make_data(settings["n"], settings["true_m"], settings["true_b"], settings["noise"], settings["seed"])
    batch, rate = settings["batch_size"], settings["learning_rate"]

    def dataset_fn():  # built once on every worker
        data = tf.data.Dataset.from_tensor_slices((x, y))
        return data.shuffle(len(x), seed=settings["seed"]).repeat().batch(batch, drop_remainder=True)

    iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))

    @tf.function
    def step(iterator):
        def replica_fn(batch_xy):
            bx, by = batch_xy
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((m * bx + b - by) ** 2)
            dm, db = tape.gradient(loss, [m, b])
            # A tenth of the step size for the last third: less jitter from the mini-batches at the end.
            lr = tf.where(steps_done < 2 * settings["steps"] // 3, rate, rate / 10)
            m.assign_sub(lr * dm)
            b.assign_sub(lr * db)
            steps_done.assign_add(1)
            return loss

        return strategy.run(replica_fn, args=(next(iterator),))

    trajectory = []
    start = time.perf_counter()
    scheduled = 0
    while scheduled < settings["steps"]:
        chunk = min(settings["record_every"], settings["steps"] - scheduled)
        losses = [coordinator.schedule(step, args=(iterator,)) for _ in range(chunk)]
        coordinator.join()  # wait for this chunk, then record where m and b are
        scheduled += chunk
        trajectory.append({
            "scheduled": scheduled, "steps_done": int(steps_done.numpy()), "m": float(m.numpy()),
            "b": float(b.numpy()), "loss": float(np.mean([v.fetch() for v in losses])),
        })
        print(f"step {scheduled:>5}: m = {trajectory[-1]['m']:+.4f}  b = {trajectory[-1]['b']:+.4f}  "
              f"batch loss {trajectory[-1]['loss']:.5f}", flush=True)
    return {"m": float(m.numpy()), "b": float(b.numpy()), "steps_done": int(steps_done.numpy()),
            "seconds": time.perf_counter() - start, "trajectory": trajectory}


def chief_entry(settings_path: str) -> None:
    """Run the chief with the settings in a JSON file; write its results next to it."""
    settings = json.loads(Path(settings_path).read_text())
    result = train_as_chief(settings)
    Path(settings["result_path"]).write_text(json.dumps(result))


"""
## Starting and stopping the processes

Each process gets its own TF_CONFIG and a log file. Whatever happens, `finally` stops every process we
started, by pid: SIGTERM, then SIGKILL if it has not exited within a few seconds.
"""

SERVER_CODE = "from hpcvision.tutorials.distributed_regression import serve; serve()"
CHIEF_CODE = "import sys; from hpcvision.tutorials.distributed_regression import chief_entry; chief_entry(sys.argv[1])"


def start_task(code: list[str], config: str, log_path: Path) -> subprocess.Popen:
    """Start `python -c code...` with TF_CONFIG=config, output to log_path."""
    env = dict(os.environ, TF_CONFIG=config, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-c", *code], env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(processes: dict[str, subprocess.Popen], grace: float = 5.0) -> None:
    """Terminate each still-running process by pid; kill what ignores the request."""
    for process in processes.values():
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may exit between poll and kill
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes.values():
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


def last_lines(path: Path, count: int = 3) -> str:
    """The last lines of a log, for error messages."""
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(lines[-count:]) or "(empty log)"


def run_cluster(settings: dict, log_dir: Path, workers: int, timeout: float) -> dict:
    """Start ps, workers and chief; wait for the chief; stop everything; return the chief's result."""
    cluster = make_cluster(workers)
    log_dir.mkdir(parents=True, exist_ok=True)
    settings_path = log_dir / "chief-settings.json"
    settings = dict(settings, result_path=str(log_dir / "chief-result.json"), timeout=timeout)
    settings_path.write_text(json.dumps(settings))
    print("cluster: " + ", ".join(f"{job} {' '.join(hosts)}" for job, hosts in cluster.items()))

    processes: dict[str, subprocess.Popen] = {}
    try:
        for job in ("ps", "worker"):
            for index in range(len(cluster[job])):
                name = f"{job}-{index}"
                config = json.dumps(tf_config(cluster, job, index))
                processes[name] = start_task([SERVER_CODE], config, log_dir / f"{name}.log")
        chief_log = log_dir / "chief-0.log"
        config = json.dumps(tf_config(cluster, "chief", 0))
        processes["chief-0"] = start_task([CHIEF_CODE, str(settings_path)], config, chief_log)
        print("started " + ", ".join(f"{name} (pid {p.pid})" for name, p in processes.items()))
        deadline = time.monotonic() + timeout
        while processes["chief-0"].poll() is None:
            for name, process in processes.items():
                if name != "chief-0" and process.poll() is not None:
                    raise UserError(f"{log_dir / (name + '.log')}: {name} exited with code {process.returncode}: "
                                    f"{last_lines(log_dir / (name + '.log'))}")
            if time.monotonic() > deadline:
                raise UserError(f"{chief_log}: training did not finish within {timeout:.0f} s: {last_lines(chief_log)}")
            time.sleep(0.5)
        if processes["chief-0"].returncode != 0:
            raise UserError(f"{chief_log}: chief exited with code {processes['chief-0'].returncode}: "
                            f"{last_lines(chief_log)}")
    finally:
        stop(processes)
        print("stopped " + ", ".join(f"{name} (pid {p.pid})" for name, p in processes.items()))
    result = json.loads(Path(settings["result_path"]).read_text())
    result["pids"] = {name: process.pid for name, process in processes.items()}
    return result


def main(
    out_dir=None, *, steps: int = 600, workers: int = 2, learning_rate: float = 0.02, batch_size: int = 64,
    n: int = 2000, true_m: float = 0.3, true_b: float = -3.0, noise: float = 0.1, seed: int = 0,
    timeout: float = 300.0,
) -> dict:
    """Run the lesson on a local cluster; write figures, logs and results.json; return the results."""
    out = output_dir(out_dir, "distributed-regression")
    settings = {"n": n, "true_m": true_m, "true_b": true_b, "noise": noise, "seed": seed, "steps": steps,
                "learning_rate": learning_rate, "batch_size": batch_size, "record_every": max(1, steps // 30)}
    chief = run_cluster(settings, out / "logs", workers, timeout)
    print(f"chief's log (m, b every {settings['record_every']} steps): {out / 'logs' / 'chief-0.log'}")

    x, y = make_data(n, true_m, true_b, noise, seed)
    lstsq_m, lstsq_b = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1).astype(np.float64), y, rcond=None)[0]
    print(f"true           m = {true_m:+.5f}  b = {true_b:+.5f}")
    print(f"least squares  m = {lstsq_m:+.5f}  b = {lstsq_b:+.5f}  (one process, closed form)")
    print(f"1 ps {workers} workers m = {chief['m']:+.5f}  b = {chief['b']:+.5f}  "
          f"({chief['steps_done']} steps in {chief['seconds']:.1f} s)")

    plt = pyplot()
    path = chief["trajectory"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, true in zip(axes, ("m", "b", "loss"), (true_m, true_b, noise**2), strict=True):
        ax.plot([p["scheduled"] for p in path], [p[key] for p in path], "o-", ms=3)
        ax.axhline(true, color="k", ls=":", label="true" if key != "loss" else "noise variance")
        ax.set(xlabel="steps scheduled", title=key if key != "loss" else "batch loss")
        ax.legend()
    axes[2].set_yscale("log")
    fig.suptitle(f"asynchronous training: 1 parameter server, {workers} workers")
    save_figure(fig, out / "convergence.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, y, s=3, alpha=0.4, label="data")
    grid = np.array([-5.0, 5.0])
    ax.plot(grid, chief["m"] * grid + chief["b"], "r", lw=2, label=f"distributed m={chief['m']:.3f} b={chief['b']:.3f}")
    ax.set(xlabel="x", ylabel="y", title="y = m x + b trained by 1 ps + workers")
    ax.legend()
    save_figure(fig, out / "fit.png")

    results = {
        "true_m": true_m, "true_b": true_b, "m": chief["m"], "b": chief["b"],
        "lstsq_m": float(lstsq_m), "lstsq_b": float(lstsq_b),
        "steps_scheduled": steps, "steps_done": chief["steps_done"], "seconds": chief["seconds"],
        "workers": workers, "parameter_servers": 1, "learning_rate": learning_rate, "batch_size": batch_size,
        "trajectory": path, "log_dir": str(out / "logs"), "pids": chief["pids"],
    }
    write_results(out, results)
    return results


def build_parser():
    """Command line of this tutorial."""
    parser = parser_for(__doc__, "distributed-regression")
    parser.add_argument("--steps", type=bounded(int, minimum=1), default=600, help="training steps to schedule")
    parser.add_argument("--workers", type=bounded(int, minimum=1), default=2, help="worker processes")
    parser.add_argument("--learning-rate", type=bounded(float, above=0), default=0.02)
    parser.add_argument("--batch-size", type=bounded(int, minimum=1), default=64)
    parser.add_argument("--timeout", type=bounded(float, above=0), default=300.0, help="seconds before giving up on the cluster")
    parser.add_argument("--seed", type=bounded(int, minimum=0), default=0)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_script(main, build_parser()))
