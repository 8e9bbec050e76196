"""The demo recipe (configs/demo.yaml: the `small` network and its optimiser, schedule, augmentation)
against keras-io's "simple MNIST convnet", trained one after the other in this run on the same data.

Both read Fashion-MNIST as the demo pipeline sees it: 28 px gray upscaled to 64 px, RGB JPEG q95
(what `data sample` writes), decoded and resized back to the recipe's size; data in memory, one
process, Keras `fit`, so the figure is the network + recipe, not the input pipeline or all-reduce.
Prints each one's training img/s and validation top-1, and the ratios recipe / baseline.

    python benchmarks/demo_recipe.py            # the recipe's epochs for both (minutes)
    python benchmarks/demo_recipe.py --quick    # 2,000 images, a few steps: a smoke run
    python benchmarks/demo_recipe.py --no-baseline --ema-decay 0.99    # the recipe with Keras' weight EMA
    python benchmarks/demo_recipe.py --no-baseline --mixup-alpha 0.2   # ... with Keras' MixUp on its batches
    python benchmarks/demo_recipe.py --no-baseline --set epochs=6 --set input.random_erasing=0.25 \
        --model-arg widths=[48,96,192]     # a candidate recipe: settings and builder keywords changed

The recipe's optimizer, weight decay, mixed precision, normalisation and batch augmentations (random
erasing, MixUp, ...) are applied with the functions `hpcvision train` uses. Img per CPU-second (process
CPU time, all threads) is printed beside img/s: on shared cores it compares runs better than wall time.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_fashion_mnist(folder: Path, limit: int | None) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) as uint8 28x28 / int arrays."""
    from hpcvision.data.fashion_mnist import load_fashion_mnist

    x_train, y_train, x_test, y_test = (array[:limit] for array in load_fashion_mnist(folder))
    return x_train, y_train.astype("int32"), x_test, y_test.astype("int32")


def as_the_demo_sees_it(images: np.ndarray, size: int) -> np.ndarray:
    """28 px gray -> 64 px RGB JPEG q95 (as `data sample`) -> decoded -> bilinear to `size`, float 0..255."""
    import tensorflow as tf
    from PIL import Image

    decoded = np.empty((len(images), 64, 64, 3), np.uint8)
    for i, gray in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(gray, mode="L").resize((64, 64), Image.BICUBIC).convert("RGB").save(
            buffer, format="JPEG", quality=95)
        decoded[i] = np.asarray(Image.open(buffer).convert("RGB"))
    resized = tf.image.resize(tf.constant(decoded, tf.float32), [size, size], method="bilinear")
    return resized.numpy().astype("float32")


def keras_io_convnet(num_classes: int, size: int):
    """keras-io's simple MNIST convnet (2 conv + 2 pool + dropout 0.5 + dense), unchanged."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((size, size, 3)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dropout(0.5), layers.Dense(num_classes),
    ], name="keras_io_convnet")


def recipe_schedule(recipe: dict, steps_per_epoch: int, total_steps: int):
    """Linear warm-up then cosine to 0, peak = learning_rate x (global) batch_size / 256 (as hpcvision train)."""
    import keras
    import tensorflow as tf

    peak = recipe["learning_rate"] * recipe["batch_size"] / 256.0
    warmup = recipe.get("warmup_epochs", 0) * steps_per_epoch

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            progress = tf.clip_by_value((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
            rate = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
            return tf.where(step < warmup, peak * (step + 1.0) / max(warmup, 1.0), rate) if warmup else rate

    return WarmupCosine()


def augment(recipe: dict, images, labels):
    """Flip, plus the pad-and-crop of `augment: pad_crop` when the recipe pads."""
    import tensorflow as tf

    recipe = recipe.get("input", recipe)  # a config's preprocessing options are its `input:` section
    pad = recipe.get("pad")
    size = images.shape[0]
    if recipe.get("augment") == "pad_crop":
        pad = max(1, size // 8) if pad is None else pad
        if pad:
            images = tf.pad(images, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
            images = tf.image.random_crop(images, [size, size, 3])
    if recipe.get("augment", "none") != "none" and recipe.get("flip", True):
        images = tf.image.random_flip_left_right(images)
    return images, labels


def batch_fn(recipe: dict, num_classes: int, seed: int):
    """(images 0..255, labels) batch -> (normalised images, one-hot or mixed labels), as the training
    pipeline does: its `batch_augmenter` (RandAugment, random erasing, MixUp, CutMix) when one is on."""
    import tensorflow as tf

    from hpcvision.data.batch_augment import batch_augmenter
    from hpcvision.data.input_config import InputConfig
    from hpcvision.data.presets import normalize_image

    config = InputConfig(**recipe.get("input", {}))
    augmenter = batch_augmenter(config, num_classes, seed)

    def prepare(images, labels):
        if augmenter is None:
            return normalize_image(images, config.normalize), tf.one_hot(labels, num_classes)
        images, labels = augmenter(images, labels)
        return images, labels if len(labels.shape) == 2 else tf.one_hot(labels, num_classes)

    return prepare


def train_and_score(model, optimizer, loss, data, *, batch_size: int, epochs: int, augment_fn=None,
                    batch_fn=None):
    """Fit, then (training img/s and img per CPU-second over the epochs after the first, validation top-1,
    seconds); `batch_fn` maps whole batches. With `use_ema`, fit ends with the averages in the model."""
    import keras
    import tensorflow as tf

    x_train, y_train, x_test, y_test = data
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=1)
    if augment_fn is not None:
        train = train.map(augment_fn, num_parallel_calls=2)
    train = train.batch(batch_size, drop_remainder=True)
    if batch_fn is not None:
        train = train.map(batch_fn, num_parallel_calls=2)
    train = train.prefetch(2)
    model.compile(optimizer, loss, metrics=["accuracy"])
    times, cpu_times = [], []

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)
            cpu_times.append(time.process_time() - self.cpu_start)

    model.fit(train, epochs=epochs, verbose=0, callbacks=[EpochTimes()])
    skip = 1 if len(times) > 1 else 0  # the first epoch includes tracing
    images = (len(times) - skip) * (len(x_train) // batch_size) * batch_size
    top1 = model.evaluate(x_test, y_test, batch_size=500, verbose=0)[1]
    return images / sum(times[skip:]), images / sum(cpu_times[skip:]), float(top1), sum(times)


def main(argv: list[str] | None = None) -> int:
    from hpcvision.data.config import DEFAULT_FASHION_MNIST
    from hpcvision.data.fashion_mnist import has_fashion_mnist

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--fashion-mnist", default=str(DEFAULT_FASHION_MNIST), help="folder with the four IDX files")
    parser.add_argument("--epochs", type=int, help="epochs for both (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2: the demo machine; 0: leave TensorFlow's choice)")
    parser.add_argument("--quick", action="store_true", help="2,000 images, 1 epoch: a smoke run")
    parser.add_argument("--workers", type=int, default=2,
                        help="the demo's `launch --workers`: global batch = batch_size x this (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting (YAML value; input.KEY for the input section), repeatable")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword for the model's builder (YAML value), e.g. widths=[48,96,192], repeatable")
    parser.add_argument("--ema-decay", type=float, default=0.0, help="the recipe with Keras' weight EMA (use_ema)")
    parser.add_argument("--mixup-alpha", type=float, default=0.0, help="the recipe with Keras' MixUp layer")
    parser.add_argument("--no-baseline", action="store_true", help="the recipe only, not the keras-io convnet")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    if args.threads:  # 0: TensorFlow may already be running (a test calling main), and then it cannot change
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    recipe = {**train_defaults(), **yaml.safe_load(Path(args.config).read_text())}
    overrides = [*args.set, *([f"ema_decay={args.ema_decay}"] if args.ema_decay else []),
                 *([f"input.mixup_alpha={args.mixup_alpha}"] if args.mixup_alpha else [])]
    for key, value in key_values(overrides, parser).items():
        section, _, name = key.rpartition(".")
        (recipe.setdefault(section, {}) if section else recipe)[name] = value
    model_args = key_values(args.model_arg, parser)
    size = int(recipe.get("image_size") or 28)
    epochs = 1 if args.quick else (args.epochs or math.ceil(float(recipe["epochs"])))
    limit = 2000 if args.quick else None
    if has_fashion_mnist(Path(args.fashion_mnist)):
        x_train, y_train, x_test, y_test = load_fashion_mnist(Path(args.fashion_mnist), limit)
        source = "Fashion-MNIST"
    else:  # only for --quick smoke runs on machines without the Debian package
        if not args.quick:
            raise SystemExit(f"{args.fashion_mnist}: no Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
        rng = np.random.default_rng(0)
        x_train, x_test = (rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) for n in (limit, limit))
        y_train, y_test = (rng.integers(0, 10, n).astype("int32") for n in (limit, limit))
        source = "random pixels (no Fashion-MNIST here)"
    data = (as_the_demo_sees_it(x_train, size), y_train, as_the_demo_sees_it(x_test, size), y_test)
    batch = int(recipe["batch_size"]) * args.workers
    print(f"data: {source}, {len(x_train)} train / {len(x_test)} validation images at {size} px; "
          f"{epochs} epoch(s) each; batch {batch}; {args.threads} intra-op threads", flush=True)

    ours, params = train_recipe(recipe, model_args, data, batch=batch, epochs=epochs)
    changed = ", ".join([*overrides, *args.model_arg])
    print(f"recipe   ({recipe.get('model', 'small')}, {params:,} params{', ' + changed if changed else ''}): "
          f"{ours[0]:,.0f} img/s, {ours[1]:,.0f} img/CPU-s, top-1 {ours[2]:.4f}, {ours[3]:.0f} s", flush=True)
    if args.no_baseline:
        return 0

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(1)
    baseline_model = keras_io_convnet(10, size)
    unit = {"input": {"normalize": "unit"}}
    base = train_and_score(baseline_model, keras.optimizers.Adam(),
                           keras.losses.CategoricalCrossentropy(from_logits=True),
                           evaluation_ready(data, unit), batch_size=128, epochs=epochs, batch_fn=batch_fn(unit, 10, 1))
    print(f"baseline (keras-io convnet, {baseline_model.count_params():,} params): {base[0]:,.0f} img/s, "
          f"{base[1]:,.0f} img/CPU-s, top-1 {base[2]:.4f}, {base[3]:.0f} s", flush=True)
    print(f"ratio recipe/baseline: img/s x{ours[0] / base[0]:.2f}, img/CPU-s x{ours[1] / base[1]:.2f}, "
          f"top-1 {100 * (ours[2] - base[2]):+.2f} points, time x{ours[3] / base[3]:.2f}")
    return 0


def train_defaults() -> dict:
    """`hpcvision train`'s default for each plain setting a recipe leaves out (so a recipe means here what it
    means to train)."""
    import dataclasses

    from hpcvision.train.config import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def key_values(pairs: list[str], parser: argparse.ArgumentParser) -> dict:
    """['key=yaml value', ...] -> {key: value}; a pair without '=' is the parser's one-line error."""
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            parser.error(f"expected KEY=VALUE, got {pair!r}")
        values[key] = yaml.safe_load(text)
    return values


def evaluation_ready(data: tuple, recipe: dict) -> tuple:
    """(train images 0..255, labels, validation images normalised as the recipe says, one-hot labels)."""
    import keras
    import tensorflow as tf

    from hpcvision.data.input_config import InputConfig
    from hpcvision.data.presets import normalize_image

    normalize = InputConfig(**recipe.get("input", {})).normalize
    x_test = np.asarray(normalize_image(tf.constant(data[2]), normalize))
    return data[0], data[1], x_test, keras.utils.to_categorical(data[3], 10)


def train_recipe(recipe: dict, model_args: dict, data: tuple, *, batch: int, epochs: int):
    """Train the recipe as `hpcvision train` sets it up (precision, optimizer, loss); (scores, params)."""
    import keras
    import tensorflow as tf

    from hpcvision.models import model_spec
    from hpcvision.train.loop import set_precision
    from hpcvision.train.optim import make_optimizer

    loss_scaling = set_precision(recipe["mixed_precision"], tf, keras)
    keras.utils.set_random_seed(1)
    steps_per_epoch = len(data[0]) // batch
    schedule = recipe_schedule({**recipe, "batch_size": batch}, steps_per_epoch, epochs * steps_per_epoch)
    optimizer = make_optimizer(recipe["optimizer"], schedule, momentum=recipe["momentum"],
                               weight_decay=recipe["weight_decay"], loss_scaling=loss_scaling,
                               clip_norm=recipe["clip_norm"], ema_decay=recipe["ema_decay"])
    model = model_spec(recipe["model"]).build(num_classes=10, image_size=int(recipe["image_size"] or 28), **model_args)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=float(recipe["label_smoothing"]))
    scores = train_and_score(model, optimizer, loss, evaluation_ready(data, recipe), batch_size=batch, epochs=epochs,
                             augment_fn=lambda x, y: augment(recipe, x, y), batch_fn=batch_fn(recipe, 10, recipe.get("seed") or 1))
    return scores, model.count_params()


if __name__ == "__main__":
    raise SystemExit(main())
