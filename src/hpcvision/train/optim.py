"""Optimiser, learning-rate schedule and loss of the training loop.

The rate is a function of OUR step variable, not `optimizer.iterations`: with asynchronous
parameter servers Keras' iteration counter loses increments (see shared TF notes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

# Variables matched by these substrings get no weight decay (biases and normalisation scales/offsets).
NO_DECAY = ["bias", "beta", "gamma"]


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
                   loss_scaling: bool):
    """A Keras 3 optimiser: SGD with Nesterov momentum, RMSProp (inception settings) or Adam."""
    import keras

    decay = weight_decay or None
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True, weight_decay=decay)
    elif name == "rmsprop":
        # rho 0.9, epsilon 1.0: the settings Inception v3 was trained with.
        optimizer = keras.optimizers.RMSprop(learning_rate, rho=0.9, momentum=momentum, epsilon=1.0,
                                             weight_decay=decay)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if decay:
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def per_example_loss(outputs, labels, *, num_classes: int, label_smoothing: float, aux_weight: float):
    """Cross-entropy per example (float32) plus `aux_weight` x each auxiliary head's; and the main logits."""
    import tensorflow as tf

    heads = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    target = tf.one_hot(labels, num_classes)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / num_classes

    def cross_entropy(logits):
        return tf.nn.softmax_cross_entropy_with_logits(target, tf.cast(logits, tf.float32))

    loss = cross_entropy(heads[0])
    for aux in heads[1:]:
        loss += aux_weight * cross_entropy(aux)
    return loss, tf.cast(heads[0], tf.float32)
