"""A convolutional network on Fashion-MNIST: train it, then look at its filters and feature maps.

Lesson 5 of the course. A CNN stacks the convolutions of lesson 4, but learns the kernels instead of
hand-picking them. We train a small one for a few epochs on Fashion-MNIST (28x28 grayscale clothes,
10 classes; Debian's `dataset-fashion-mnist` ships the original IDX files, read here with NumPy), then
plot what its first convolution learned and what each of those filters makes of one test image.

The network is hpcvision's registered "small" model (`--model small`: 3 conv + batch-norm stages, 0.39 M
parameters, the demo's network; grayscale is repeated to its 3 input channels) when this install has
it, otherwise the tiny CNN defined below (`--model tiny`: conv 3x3 -> pool -> conv 3x3 -> pool ->
dense, 0.1 M parameters, ~10x faster). The default run takes about a minute on 2 CPU cores.

Run:
    hpcvision tutorial cnn --out /tmp/cnn [--epochs 2] [--train-samples 20000]
    tensorboard --logdir /tmp/cnn/logs

Without the dataset (`--fashion-mnist DIR`, default /usr/share/datasets/fashion-mnist) it says so
and trains on synthetic stripes instead. Writes filters.png, feature_maps.png, training.png, logs/
and results.json (test accuracy, per-epoch loss and accuracy, which data and model it used).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcvision.config import bounded
from hpcvision.data.config import DEFAULT_FASHION_MNIST
from hpcvision.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from hpcvision.errors import UserError
from hpcvision.tutorials._common import output_dir, parser_for, pyplot, run_script, save_figure, write_results

"""
## Reading the IDX files

IDX is a tiny format: a big-endian magic number (0x0000 0803 = unsigned bytes, 3 dimensions), the
size of each dimension as a 32-bit integer, then the raw bytes. Labels are the 1-dimensional case.
`load_fashion_mnist` (shared with `hpcvision data sample`, in hpcvision/data/fashion_mnist.py) reads
the four files and checks exactly that.
"""


def synthetic_stripes(n: int, seed: int):
    """Stand-in data: 28x28 images of stripes at one of 10 angles (the class), with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:28, 0:28]
    angles = labels * np.pi / 10
    phase = rng.uniform(0, 2 * np.pi, n)
    waves = np.sin(0.7 * (np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy) + phase[:, None, None])
    images = np.clip(127 + 100 * waves + rng.normal(0, 30, waves.shape), 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


"""
## The network

Outputs are logits (no softmax): the loss applies the softmax itself, which is numerically safer.
"""


def tiny_cnn(num_classes: int = 10):
    """conv(16, 3x3) -> max-pool -> conv(32, 3x3) -> max-pool -> dense(64) -> dense logits."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(28, 28, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu", name="features")(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


def choose_model(name: str):
    """Build the requested network; 'auto' means the registered "small" model if present, else tiny."""
    from hpcvision.models.registry import build_model, model_names

    if name == "auto":
        name = "small" if "small" in model_names() else "tiny"
    if name == "tiny":
        return "tiny", tiny_cnn()
    if name not in model_names():
        raise UserError(f"--model {name}: not registered (choose tiny or one of {', '.join(model_names())})")
    return name, build_model(name, num_classes=10, image_size=28)


def first_conv(model):
    """The first Conv2D layer, searching nested models too."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer
        if hasattr(layer, "layers"):
            found = first_conv(layer)
            if found is not None:
                return found
    return None


def epoch_scalars(log_dir: str):
    """A Keras callback writing each epoch's loss and accuracy for TensorBoard under `log_dir`."""
    import keras
    import tensorflow as tf

    from hpcvision.train.summaries import write_scalars  # the writer `hpcvision train` uses

    class _EpochScalars(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.writer = tf.summary.create_file_writer(log_dir)

        def on_epoch_end(self, epoch, logs=None):
            write_scalars(self.writer, {f"epoch/{k}": v for k, v in (logs or {}).items()}, step=epoch + 1)
            self.writer.flush()

    return _EpochScalars()


def as_model_input(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 in [0, 1], shape (n, 28, 28, channels) (gray repeated for RGB models)."""
    x = images.astype(np.float32)[..., None] / 255.0
    return np.repeat(x, channels, axis=-1) if channels > 1 else x


def main(
    out_dir=None, *, epochs: int = 2, train_samples: int = 20000, test_samples: int = 2000, batch_size: int = 128,
    fashion_mnist: str | Path = DEFAULT_FASHION_MNIST, model: str = "auto", seed: int = 0,
) -> dict:
    """Train, evaluate and visualise the CNN; write figures, TensorBoard logs and results.json."""
    import keras

    out = output_dir(out_dir, "cnn")
    keras.utils.set_random_seed(seed)

    directory = Path(fashion_mnist)
    if directory.is_dir():
        train_x, train_y, test_x, test_y = load_fashion_mnist(directory)
        data = "fashion-mnist"
        print(f"Fashion-MNIST from {directory}: {len(train_x)} train, {len(test_x)} test images")
    else:
        print(f"NOTE: {directory} not found (install Debian's dataset-fashion-mnist or pass --fashion-mnist "
              "DIR); training on SYNTHETIC stripes instead, so the accuracy says nothing about clothes.")
        train_x, train_y = synthetic_stripes(train_samples, seed)
        test_x, test_y = synthetic_stripes(test_samples, seed + 1)
        data = "synthetic"
    rng = np.random.default_rng(seed)
    train_idx = rng.permutation(len(train_x))[:train_samples]
    test_idx = rng.permutation(len(test_x))[:test_samples]

    model_name, net = choose_model(model)
    channels = net.input_shape[-1]
    x_train, y_train = as_model_input(train_x[train_idx], channels), train_y[train_idx].astype(np.int64)
    x_test, y_test = as_model_input(test_x[test_idx], channels), test_y[test_idx].astype(np.int64)
    print(f"model {model_name}: {net.count_params():,} parameters; {len(x_train)} training images, {epochs} epochs")

    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = net.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_test, y_test), verbose=2,
        callbacks=[epoch_scalars(str(out / "logs"))],
    )
    test_loss, test_accuracy = net.evaluate(x_test, y_test, batch_size=512, verbose=0)
    print(f"test accuracy {test_accuracy:.4f} on {len(x_test)} {data} images (chance 0.10)")

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs_axis = range(1, epochs + 1)
    left.plot(epochs_axis, history.history["loss"], "o-", label="train")
    left.plot(epochs_axis, history.history["val_loss"], "o-", label="test")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    right.plot(epochs_axis, history.history["accuracy"], "o-", label="train")
    right.plot(epochs_axis, history.history["val_accuracy"], "o-", label="test")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    right.legend()
    for ax in (left, right):
        ax.set_xticks(list(epochs_axis))
    save_figure(fig, out / "training.png")

    conv = first_conv(net)
    if conv is not None:
        kernels = conv.get_weights()[0]  # (h, w, in channels, filters)
        count = kernels.shape[-1]
        cols = 8
        rows = -(-count // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.5 * rows), squeeze=False)
        for i, ax in enumerate(axes.ravel()):
            ax.axis("off")
            if i < count:
                ax.imshow(kernels[:, :, :, i].mean(axis=-1), cmap="bwr", vmin=-np.abs(kernels).max(),
                          vmax=np.abs(kernels).max())
                ax.set_title(f"{i}", fontsize=8)
        fig.suptitle(f"learned first-layer filters ({conv.name}, {kernels.shape[0]}x{kernels.shape[1]})")
        save_figure(fig, out / "filters.png")

        # A model that stops at the first convolution gives its feature maps for one test image.
        probe = keras.Model(net.inputs, conv.output)
        maps = probe.predict(x_test[:1], verbose=0)[0]  # (h, w, filters)
        fig, axes = plt.subplots(rows + 1, cols, figsize=(1.4 * cols, 1.5 * (rows + 1)), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        axes[0, 0].imshow(x_test[0, :, :, 0], cmap="gray")
        label = CLASS_NAMES[y_test[0]] if data == "fashion-mnist" else f"class {y_test[0]}"
        axes[0, 0].set_title(label, fontsize=8)
        for i in range(count):
            ax = axes[1 + i // cols, i % cols]
            ax.imshow(maps[:, :, i], cmap="viridis")
            ax.set_title(f"map {i}", fontsize=8)
        fig.suptitle("one test image and its first-layer feature maps")
        save_figure(fig, out / "feature_maps.png")
    else:
        print(f"NOTE: model {model_name} has no Conv2D layer at top level; no filter or feature-map plots")

    results = {
        "data": data,
        "model": model_name,
        "parameters": int(net.count_params()),
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "epochs": epochs,
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "log_dir": str(out / "logs"),
    }
    write_results(out, results)
    return results


def build_parser():
    """Command line of this tutorial."""
    parser = parser_for(__doc__, "cnn")
    parser.add_argument("--epochs", type=bounded(int, minimum=1), default=2)
    parser.add_argument("--train-samples", type=bounded(int, minimum=1), default=20000, help="training images used (of 60,000)")
    parser.add_argument("--test-samples", type=bounded(int, minimum=1), default=2000, help="test images used (of 10,000)")
    parser.add_argument("--batch-size", type=bounded(int, minimum=1), default=128)
    parser.add_argument("--fashion-mnist", default=DEFAULT_FASHION_MNIST, help="folder with the four IDX files")
    parser.add_argument("--model", default="auto", help="tiny, small, or auto (small when registered)")
    parser.add_argument("--seed", type=bounded(int, minimum=0), default=0)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_script(main, build_parser()))
