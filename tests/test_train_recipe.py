"""The training recipe's parts from Keras: optimizers, global-norm clipping, weight EMA (issue 11)."""

from __future__ import annotations

import re

import numpy as np
import pytest

SYNTHETIC = ["--synthetic", "--num-classes", "10", "--model", "small", "--image-size", "28", "--batch-size", "16",
             "--label-smoothing", "0", "--log-every", "5"]


@pytest.mark.parametrize(("name", "keras_class"), [("adamw", "AdamW"), ("lion", "Lion"), ("lamb", "Lamb"),
                                                   ("sgd", "SGD")])
def test_optimizers_are_keras_own_with_clipping_ema_and_decay_off_norms(name, keras_class):
    import keras

    from hpcvision.train.optim import make_optimizer

    optimizer = make_optimizer(name, 0.01, momentum=0.9, weight_decay=1e-4, loss_scaling=False, clip_norm=2.0,
                               ema_decay=0.999)
    assert type(optimizer) is getattr(keras.optimizers, keras_class)
    assert (optimizer.weight_decay, optimizer.global_clipnorm) == (1e-4, 2.0)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.999
    bias, kernel = keras.Variable(np.zeros(2), name="bias"), keras.Variable(np.zeros(2), name="kernel")
    assert optimizer._use_weight_decay(kernel) and not optimizer._use_weight_decay(bias)
    plain = make_optimizer(name, 0.01, momentum=0.9, weight_decay=0.0, loss_scaling=False)
    assert plain.global_clipnorm is None and not plain.use_ema and not plain.weight_decay


def test_global_clipping_bounds_the_update(train, tmp_path):
    """One SGD step without momentum moves the weights by lr x the clipped gradient: norm <= lr x clip."""
    args = [*SYNTHETIC, "--optimizer", "sgd", "--momentum", "0", "--weight-decay", "0", "--learning-rate", "1.6",
            "--schedule", "constant", "--steps", "1", "--seed", "3"]
    moved = {}
    for clip in ("0", "0.01"):
        folder = tmp_path / clip
        assert train(*args, "--clip-norm", clip, "--checkpoint-dir", folder)[0] == 0
        moved[clip] = np.sqrt(sum(np.sum((after - before) ** 2) for before, after in trained_pairs(folder, args)))
    rate = 1.6 * 16 / 256
    assert moved["0"] > 10 * rate * 0.01  # unclipped, the step is far longer than the bound ...
    assert moved["0.01"] == pytest.approx(rate * 0.01, rel=1e-3)  # ... clipped, it is exactly on it


def trained_pairs(folder, args):
    """(initial, trained) values of every trainable weight: the seed rebuilds the initial model."""
    import keras
    import tensorflow as tf

    from hpcvision.models import build_model

    keras.utils.set_random_seed(int(args[args.index("--seed") + 1]))
    model = build_model("small", 10, 28)
    initial = [v.numpy() for v in model.trainable_variables]
    tf.train.Checkpoint(model=model).restore(str(folder / "ckpt-1")).expect_partial()
    return list(zip(initial, [v.numpy() for v in model.trainable_variables], strict=True))


def test_ema_weights_are_what_training_evaluates_and_inference_loads(train, tmp_path, records):
    import tensorflow as tf

    from hpcvision.data.pipeline import make_dataset
    from hpcvision.train.checkpoint import load_trained_model

    code, messages = train("--data", records, "--model", "small", "--image-size", "32", "--batch-size", "20",
                           "--epochs", "2", "--augment", "none", "--optimizer", "adam", "--learning-rate", "0.01",
                           "--ema-decay", "0.8", "--checkpoint-dir", tmp_path, "--log-every", "5",
                           "--label-smoothing", "0")
    assert code == 0, messages
    logged = [float(m) for m in re.findall(r"eval step 20: loss (\S+)", "\n".join(messages))]
    model, config, _labels = load_trained_model(tmp_path)
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-20"))
    kernel = next(v for v in model.trainable_variables if v.path.endswith("logits/kernel"))
    np.testing.assert_array_equal(kernel.numpy(), reader.get_tensor("ema/logits:kernel/.ATTRIBUTES/VARIABLE_VALUE"))
    raw = [k for k in reader.get_variable_to_shape_map() if "/_trainable_variables/" in k
           and list(reader.get_variable_to_shape_map()[k]) == list(kernel.shape)]
    assert raw and not np.allclose(kernel.numpy(), reader.get_tensor(raw[0]))  # the averages, not the weights
    # The loop's last evaluation saw the same (averaged) weights: recompute its loss from the loaded model.
    dataset = make_dataset(records, "validation", config.input, training=False, batch_size=50, image_size=32)
    losses = [tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(images)) for images, labels in dataset]
    assert logged == [pytest.approx(float(tf.reduce_mean(tf.concat(losses, 0))), rel=1e-4)]
