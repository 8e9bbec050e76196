"""Trainer-process CPU seconds per image with and without the input service, and img/s, in the same run.

    .venv/bin/python benchmarks/data_service.py            # 2000 JPEGs of ~400x350, 224 px, batch 64
    .venv/bin/python benchmarks/data_service.py --quick    # smoke run

The point of `hpcvision data serve`: decoding and augmenting leave the trainer's cores. This process
plays the trainer's input side and pulls training batches the two ways `train` makes them
(`train.inputs.train_dataset_fn`): locally (make_dataset in this process), and from a dispatcher and
--workers service workers started as `hpcvision data serve` processes on 127.0.0.1 (make_dataset run
there, batches streamed back). For each it prints img/s and this process's CPU seconds per 1,000 images
(the service workers' own CPU seconds beside them: the decode moved there, it did not vanish), then the
ratios per round, medians over --rounds alternating rounds. On one machine the workers share its cores
with this process, so img/s says little about a cluster's CPU nodes; the CPU per image is the figure.
Shards are generated once and cached under --cache-dir (default /tmp), as benchmarks/input_pipeline.py does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from input_pipeline import build_shards  # noqa: E402


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of `pid` (default: this process) so far, from /proc."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_service(workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A dispatcher (runs until killed) and `workers` workers (exit once it is gone); its HOST:PORT."""
    from hpcvision.cluster.launch import free_ports

    where = f"127.0.0.1:{free_ports(1)[0]}"
    command = [sys.executable, "-m", "hpcvision", "data", "serve"]
    processes = [subprocess.Popen([*command, "--role", "dispatcher", "--port", where.rsplit(":", 1)[1]],
                                  stdout=subprocess.PIPE, text=True)]
    processes += [subprocess.Popen([*command, "--role", "worker", "--dispatcher", where], stdout=subprocess.PIPE,
                                   text=True) for _ in range(workers)]
    for process in processes:  # "data serve: <role> at HOST:PORT ..." once each is up
        line = process.stdout.readline()
        if not line.startswith("data serve:"):
            stop(processes)
            raise SystemExit(f"the input service did not start: {line!r}")
    return where, processes


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop the dispatcher (the workers follow it by themselves), then anything left."""
    processes[0].terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(dataset, images: int, batch: int, service_pids: list[int]) -> tuple[float, float, float]:
    """(img/s, this process's CPU s per image, the service processes' CPU s per image) pulling `images`."""
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)  # warm-up: tracing, buffers, the service's job start
    start, mine = time.perf_counter(), cpu_seconds()
    theirs = [cpu_seconds(pid) for pid in service_pids]
    seen = 0
    while seen < images:
        next(iterator)
        seen += batch
    wall = time.perf_counter() - start
    served = sum(cpu_seconds(pid) - before for pid, before in zip(service_pids, theirs, strict=True))
    return seen / wall, (cpu_seconds() - mine) / seen, served / seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--images", type=int, default=2000, help="generated JPEGs (default 2000)")
    parser.add_argument("--measure", type=int, default=2000, help="images pulled per timing (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timings; medians count")
    parser.add_argument("--workers", type=int, default=2, help="service workers (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cache-dir", default="/tmp", help="where the generated shards are kept")
    args = parser.parse_args(argv)
    height, width, shards = 350, 400, 16
    if args.quick:
        args.images, args.measure, args.rounds, args.batch_size = 96, 64, 1, 16
        height, width, shards, args.image_size = 120, 140, 4, 64

    import tensorflow as tf

    from hpcvision.train.config import TrainConfig
    from hpcvision.train.inputs import train_dataset_fn

    key = f"hpcvision-bench-input-{args.images}-{height}x{width}-{shards}"
    directory = build_shards(Path(args.cache_dir) / key, args.images, shards, height, width)
    print(f"records: {args.images} JPEGs ~{width}x{height} in {shards} shards ({directory}); batch "
          f"{args.batch_size}, {args.image_size} px; {args.workers} service worker(s); {os.cpu_count()} CPUs, "
          f"TensorFlow {tf.__version__}; load {os.getloadavg()[0]:.1f}", flush=True)
    local = TrainConfig(data=str(directory), batch_size=args.batch_size, seed=1)
    where, processes = start_service(args.workers)
    served = TrainConfig(data=str(directory), batch_size=args.batch_size, seed=1, data_service=where)
    pids = [process.pid for process in processes]
    results: dict[str, list[tuple[float, float, float]]] = {"local": [], "service": []}
    try:
        for round_ in range(args.rounds):  # alternate, so load from other jobs hits both alike
            for name, cfg in (("local", local), ("service", served)):
                # What `train` iterates (3 warm-up steps, then the measured ones): attempt `round_` gives each
                # round's service job a name of its own.
                dataset = train_dataset_fn(cfg, args.image_size, 10, steps_per_epoch=max(1, args.images // args.batch_size),
                                           first_step=0, last_step=3 + -(-args.measure // args.batch_size),
                                           service_attempt=round_)(None)
                results[name].append(measure(dataset, args.measure, args.batch_size, pids if name == "service" else []))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{name} {values[-1][0]:,.0f} img/s, {1000 * values[-1][1]:.2f} trainer CPU-s per 1k img"
                for name, values in results.items()) + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        stop(processes)
    for name, values in results.items():
        rate, mine, theirs = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"{name}: {rate:,.0f} img/s, trainer process {1000 * mine:.2f} CPU-s per 1k images"
              + (f", service processes {1000 * theirs:.2f}" if name == "service" else "")
              + f" (medians of {args.rounds})")
    cpu_ratio = statistics.median(s[1] / loc[1] for s, loc in zip(results["service"], results["local"], strict=True))
    rate_ratio = statistics.median(s[0] / loc[0] for s, loc in zip(results["service"], results["local"], strict=True))
    print(f"ratio service/local: trainer CPU per image {cpu_ratio:.2f}, img/s {rate_ratio:.2f} "
          f"(load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
