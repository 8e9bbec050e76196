"""Optimiser, learning-rate schedule and loss of the training loop.

The rate is a function of OUR step variable, not `optimizer.iterations`: with asynchronous
parameter servers Keras' iteration counter loses increments (see shared TF notes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

# Variables matched by these substrings get no weight decay (biases and normalisation scales/offsets).
NO_DECAY = ["bias", "beta", "gamma"]
# Keras classes of the optimizers that take no settings of ours beyond the common ones.
OPTIMIZER_CLASSES = {"adam": "Adam", "adamw": "AdamW", "lion": "Lion", "lamb": "Lamb"}


def scaled_learning_rate(base: float, global_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): `base` is the rate for a global batch of 256."""
    return base * global_batch / 256.0


def learning_rate_at(step, *, peak: float, steps_per_epoch: int, total_steps: int, warmup_epochs: float,
                     schedule: str, step_epochs: list[float]):
    """The rate at `step` (a tensor): linear warm-up to `peak`, then cosine / step (/10) / constant."""
    import tensorflow as tf

    step = tf.cast(step, tf.float32)
    warmup = float(warmup_epochs * steps_per_epoch)
    if schedule == "cosine":
        progress = tf.clip_by_value((step - warmup) / max(total_steps - warmup, 1.0), 0.0, 1.0)
        rate = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif schedule == "step":
        drops = tf.add_n([tf.cast(step >= b * steps_per_epoch, tf.float32) for b in step_epochs] or [0.0])
        rate = peak * tf.pow(0.1, drops)
    else:
        rate = tf.constant(peak, tf.float32)
    if warmup > 0:
        rate = tf.where(step < warmup, peak * (step + 1.0) / warmup, rate)
    return rate


def make_optimizer(name: str, learning_rate: Callable, *, momentum: float, weight_decay: float,
                   loss_scaling: bool, clip_norm: float = 0.0, ema_decay: float = 0.0):
    """A Keras 3 optimiser: SGD with Nesterov momentum, RMSProp (inception settings), Adam, AdamW, Lion or
    LAMB; Keras' own `global_clipnorm` (`clip_norm` > 0) and weight EMA (`ema_decay` > 0)."""
    import keras

    decay = weight_decay or None
    common = {"weight_decay": decay, "global_clipnorm": clip_norm or None, "use_ema": ema_decay > 0}
    if ema_decay > 0:
        common["ema_momentum"] = ema_decay
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True, **common)
    elif name == "rmsprop":
        # rho 0.9, epsilon 1.0: the settings Inception v3 was trained with.
        optimizer = keras.optimizers.RMSprop(learning_rate, rho=0.9, momentum=momentum, epsilon=1.0, **common)
    elif name in OPTIMIZER_CLASSES:
        if name == "adamw":  # AdamW refuses None; 0.0 is no decay
            common["weight_decay"] = float(weight_decay)
        optimizer = getattr(keras.optimizers, OPTIMIZER_CLASSES[name])(learning_rate, **common)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if decay:
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def ema_variables(optimizer) -> dict:
    """{model variable path: its moving average} kept by `optimizer` (empty without EMA); saved in each
    checkpoint under `ema`, so evaluate and export find the averages by the model's own names."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # under LossScaleOptimizer
    if not inner.use_ema:
        return {}
    # Keras keeps the averages in the order of the variables it was built on (private names, no public ones).
    averages = inner._model_variables_moving_average
    return {ema_key(v): a.value for v, a in zip(inner._trainable_variables, averages, strict=True)
            if a is not None}


def ema_key(variable) -> str:
    """A checkpoint key for `variable`: its path without '/', which the checkpoint format would escape."""
    return variable.path.replace("/", ":")


@contextlib.contextmanager
def ema_weights_in(model, optimizer):
    """Within the block the model's trainable weights are their moving averages (no-op without EMA)."""
    averages = ema_variables(optimizer)
    swapped = [v for v in model.trainable_variables if ema_key(v) in averages]
    kept = [v.numpy() for v in swapped]
    for variable in swapped:
        variable.assign(averages[ema_key(variable)])
    try:
        yield
    finally:
        for variable, value in zip(swapped, kept, strict=True):
            variable.assign(value)


def per_example_loss(outputs, labels, *, num_classes: int, label_smoothing: float, aux_weight: float):
    """Cross-entropy per example (float32) plus `aux_weight` x each auxiliary head's; and the main logits."""
    import tensorflow as tf

    heads = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    # Class indices [B], or class distributions [B, C] (MixUp/CutMix, hpcvision.data.batch_augment).
    target = tf.cast(labels, tf.float32) if len(labels.shape) == 2 else tf.one_hot(labels, num_classes)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / num_classes

    def cross_entropy(logits):
        return tf.nn.softmax_cross_entropy_with_logits(target, tf.cast(logits, tf.float32))

    loss = cross_entropy(heads[0])
    for aux in heads[1:]:
        loss += aux_weight * cross_entropy(aux)
    return loss, tf.cast(heads[0], tf.float32)
