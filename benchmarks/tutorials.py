"""Each tutorial's core computation against a baseline timed in the same run, printed as ratios.

    regression              least squares by gradient descent (400 steps) vs the closed-form solve
    neural-net              tf.GradientTape gradients vs the NumPy chain rule (same network, float64)
    convolution             7 kernels in one tf.nn.conv2d call vs scipy.signal.convolve2d per kernel
    cnn                     tiny-CNN training vs inference, images/s
    distributed-regression  steps/s with 1 ps + 2 workers on 127.0.0.1 vs the same loop in one process

    .venv/bin/python benchmarks/tutorials.py            # all stages (distributed: ~30 s of start-up)
    .venv/bin/python benchmarks/tutorials.py --quick    # tiny smoke run of every stage but distributed
    .venv/bin/python benchmarks/tutorials.py --stages convolution cnn

Timings are medians of repeats after a warm-up; the machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

STAGES = ("regression", "neural-net", "convolution", "cnn", "distributed-regression")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(stage: str, what: str, value: float, baseline_what: str, baseline: float, unit: str) -> None:
    """One line: the figure, the baseline, and figure / baseline."""
    print(f"{stage:<23} {what:<34} {value:>12.4g} {unit:<7} baseline {baseline_what:<28} "
          f"{baseline:>12.4g} {unit:<7} ratio {value / baseline:8.3g}", flush=True)


def bench_regression(quick: bool) -> None:
    from hpcvision.tutorials.regression import gradient_descent_line, least_squares_line, make_linear_data

    x, y = make_linear_data(2000, 0.3, -3.0, 0.1, seed=0)
    repeats = 3 if quick else 15
    closed = median_seconds(lambda: least_squares_line(x, y), repeats)
    steps = 50 if quick else 400
    descent = median_seconds(lambda: gradient_descent_line(x, y, 0.05, steps), max(1, repeats // 3))
    report("regression", f"gradient descent, {steps} steps", descent * 1e3, "normal equations", closed * 1e3, "ms")


def bench_neural_net(quick: bool) -> None:
    from hpcvision.tutorials.neural_net import backprop, init_weights, tape_gradients

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 3)), rng.normal(size=(256, 4))
    w = init_weights(3, 16, 4, seed=0)
    repeats = 3 if quick else 30
    hand = median_seconds(lambda: backprop(w, x, y, "identity"), repeats)
    tape = median_seconds(lambda: tape_gradients(w, x, y, "identity"), repeats)
    report("neural-net", "GradientTape gradients (eager)", tape * 1e3, "NumPy chain rule", hand * 1e3, "ms")


def bench_convolution(quick: bool) -> None:
    from hpcvision.tutorials.convolution import KERNELS, convolve_scipy, convolve_tf, load_photo

    photo = load_photo("camera")
    if quick:
        photo = photo[:128, :128]
    repeats = 2 if quick else 7
    with_tf = median_seconds(lambda: convolve_tf(photo, KERNELS), repeats)
    with_scipy = median_seconds(lambda: [convolve_scipy(photo, k) for k in KERNELS.values()], repeats)
    shape = "x".join(map(str, photo.shape))
    report("convolution", f"tf.nn.conv2d, 7 kernels, {shape}", with_tf * 1e3, "scipy convolve2d x7",
           with_scipy * 1e3, "ms")
    for name, kernel in KERNELS.items():  # one kernel at a time: what a single filter costs each way
        one_tf = median_seconds(lambda k=kernel, n=name: convolve_tf(photo, {n: k}), repeats)
        one_scipy = median_seconds(lambda k=kernel: convolve_scipy(photo, k), repeats)
        report("convolution", f"  {name} ({kernel.shape[0]}x{kernel.shape[1]}), tf", one_tf * 1e3, "scipy",
               one_scipy * 1e3, "ms")


def bench_cnn(quick: bool) -> None:
    import keras

    from hpcvision.tutorials.cnn import as_model_input, synthetic_stripes, tiny_cnn

    n = 512 if quick else 8192
    images, labels = synthetic_stripes(n, seed=0)  # speed does not depend on what the pixels show
    x, y = as_model_input(images, 1), labels.astype(np.int64)
    model = tiny_cnn()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:256], y[:256], batch_size=128, epochs=1, verbose=0)  # trace and warm up
    model.predict(x[:256], batch_size=128, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    train_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    model.predict(x, batch_size=128, verbose=0)
    infer_rate = n / (time.perf_counter() - start)
    report("cnn", "tiny CNN training, batch 128", train_rate, "inference, batch 128", infer_rate, "img/s")


def bench_distributed(quick: bool) -> None:
    import tensorflow as tf

    from hpcvision.tutorials.distributed_regression import make_data, run_cluster

    steps = 100 if quick else 600
    settings = {"n": 2000, "true_m": 0.3, "true_b": -3.0, "noise": 0.1, "seed": 0, "steps": steps,
                "learning_rate": 0.02, "batch_size": 64, "record_every": steps}
    with tempfile.TemporaryDirectory() as tmp:
        result = run_cluster(settings, Path(tmp), workers=2, timeout=300)
    cluster_rate = result["steps_done"] / result["seconds"]

    # Baseline: the same step (batch 64, plain gradient descent) as a tf.function in this one process.
    x, y = make_data(2000, 0.3, -3.0, 0.1, seed=0)
    data = iter(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(2000, seed=0).repeat().batch(64))
    m, b = tf.Variable(0.0), tf.Variable(0.0)

    @tf.function
    def step(batch):
        bx, by = batch
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((m * bx + b - by) ** 2)
        dm, db = tape.gradient(loss, [m, b])
        m.assign_sub(0.02 * dm)
        b.assign_sub(0.02 * db)
        return loss

    step(next(data))
    start = time.perf_counter()
    for _ in range(steps):
        step(next(data))
    float(m.numpy())
    local_rate = steps / (time.perf_counter() - start)
    report("distributed-regression", "1 ps + 2 workers (loopback)", cluster_rate, "one process",
           local_rate, "steps/s")


BENCHES = {
    "regression": bench_regression,
    "neural-net": bench_neural_net,
    "convolution": bench_convolution,
    "cnn": bench_cnn,
    "distributed-regression": bench_distributed,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (skips distributed unless named)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="stages to run (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any stage starts TensorFlow
    stages = args.stages or [s for s in STAGES if not (args.quick and s == "distributed-regression")]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}{' (quick)' if args.quick else ''}")
    for stage in stages:
        BENCHES[stage](args.quick)
    if args.quick and not args.stages:
        print("distributed-regression  skipped in --quick (process start-up dominates); "
              "run with --stages distributed-regression")
    return 0


if __name__ == "__main__":
    sys.exit(main())
