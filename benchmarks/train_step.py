"""Training throughput: our loop vs Keras `fit`, and 2 local workers vs 1.

    python benchmarks/train_step.py            # ResNet-50 at 64 px, batch 16 (about 2-3 min on 2 cores)
    python benchmarks/train_step.py --quick    # smoke run (tiny sizes), what the test suite runs

1. Our ResNet-50 trained by `hpcvision train` (custom loop, one process, synthetic batch) vs
   `keras.applications.ResNet50` trained by `model.fit` on the same synthetic batch size, in this
   same process: images/s of each and the ratio (target >= 1.0).
2. `hpcvision launch --workers 2` (all-reduce, one intra-op thread each) vs one `hpcvision train`
   process, global images/s and the ratio (on a 2-core machine expect about 0.5-1: it shows the
   cost of the all-reduce, not a speed-up).
The first timed window of each run includes tracing and is dropped.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time

RATE = re.compile(r"step (\d+)/\d+ .* ([\d.]+) img/s")


def our_loop_images_per_s(model: str, image_size: int, batch: int, window: int, workdir: str) -> float:
    """img/s of the second `window` steps of `hpcvision train --synthetic` run in this process."""
    from hpcvision.train.config import TrainConfig
    from hpcvision.train.loop import train

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger("hpcvision.train")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        cfg = TrainConfig(model=model, synthetic=True, num_classes=1000, image_size=image_size, batch_size=batch,
                          steps=2 * window, log_every=window, checkpoint_dir=os.path.join(workdir, "ours"),
                          checkpoint_every_minutes=0, histogram_every=0, label_smoothing=0.0, weight_decay=0.0,
                          strategy="one")
        train(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return _last_rate(messages)


def keras_fit_images_per_s(image_size: int, batch: int, window: int) -> float:
    """img/s of `keras.applications.ResNet50` under `model.fit` on one repeated synthetic batch."""
    import keras
    import tensorflow as tf

    model = keras.applications.ResNet50(weights=None, input_shape=(image_size, image_size, 3), classes=1000,
                                        classifier_activation=None)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = tf.random.normal([batch, image_size, image_size, 3])
    labels = tf.random.uniform([batch], maxval=1000, dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    times: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda _b, logs=None: times.append(time.perf_counter()))
    model.fit(dataset, steps_per_epoch=2 * window, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
    return batch * window / (times[-1] - times[window - 1])


def cli_images_per_s(argv: list[str], chief: str | None = None) -> float:
    """Global img/s of the last progress line of an `hpcvision` subprocess (launch: the chief's)."""
    result = subprocess.run([sys.executable, "-m", "hpcvision", *argv], capture_output=True, text=True,
                            timeout=900)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"benchmark run failed ({result.returncode}):\n{output[-3000:]}")
    lines = [line for line in output.splitlines() if chief is None or line.startswith(f"[{chief}]")]
    return _last_rate(lines)


def _last_rate(lines: list[str]) -> float:
    rates = [float(m.group(2)) for m in map(RATE.search, lines) if m]
    if not rates:
        raise SystemExit("no progress line with img/s found")
    return rates[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--window", type=int, default=8, help="steps per timed window")
    parser.add_argument("--scaling-model", default="small", help="model for the 2-workers-vs-1 figure")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow starts, here and in the CLI runs
    if args.quick:
        args.image_size, args.batch_size, args.window = 32, 2, 1

    with tempfile.TemporaryDirectory(prefix="hpcvision-bench-") as workdir:
        ours = our_loop_images_per_s("resnet50", args.image_size, args.batch_size, args.window, workdir)
        baseline = keras_fit_images_per_s(args.image_size, args.batch_size, args.window)
        print(f"resnet50 {args.image_size}px batch {args.batch_size}, CPU, one process")
        print(f"  hpcvision train loop : {ours:8.2f} img/s")
        print(f"  keras ResNet50 fit   : {baseline:8.2f} img/s")
        print(f"  ratio ours/fit       : {ours / baseline:8.2f}  (target >= 1.0)")

        window = 2 if args.quick else 20
        train = ["--synthetic", "--num-classes", "10", "--model", args.scaling_model, "--image-size", "28",
                 "--batch-size", "32", "--steps", str(2 * window), "--log-every", str(window),
                 "--histogram-every", "0", "--checkpoint-every-minutes", "0"]
        one = cli_images_per_s(["train", *train, "--checkpoint-dir", os.path.join(workdir, "one")])
        two = cli_images_per_s(["launch", "--workers", "2", "--", *train, "--checkpoint-dir",
                                os.path.join(workdir, "two")], chief="worker0")
        print(f"{args.scaling_model} 28px batch 32 per worker, global img/s")
        print(f"  1 process            : {one:8.2f} img/s")
        print(f"  2 workers (launch)   : {two:8.2f} img/s")
        print(f"  ratio 2 workers / 1  : {two / one:8.2f}  (cores: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
