"""Run `hpcvision ARGS` in a process whose CPU is split into N logical devices, with the `tiny` model
registered: `python several_devices.py N ARGS...` (tests of several replicas per task, without GPUs).

`train --strategy mirrored` then mirrors over the N devices (as over a node's GPUs). TensorFlow's
MultiWorkerMirroredStrategy takes one CPU device per worker whatever exists; for these tests only, its
local device list is widened to the N logical CPUs (a TF internal), as a GPU node's would list its GPUs.
"""

from __future__ import annotations

import functools
import sys


def tiny(num_classes: int, image_size: int = 16, aux: bool = False, *, batch_norm: bool = True):
    """Conv-BN-ReLU, pooled, dense: no dropout, so replicas can match one device exactly (and without batch
    norm, micro-batches can match one batch)."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Conv2D(8, 3, strides=2, use_bias=not batch_norm, name="conv")(inputs)
    if batch_norm:
        x = layers.BatchNormalization(name="conv_bn")(x)
    x = layers.GlobalAveragePooling2D()(layers.Activation("relu")(x))
    return keras.Model(inputs, layers.Dense(num_classes, dtype="float32", name="logits")(x), name="tiny")


def register_tiny() -> None:
    from hpcvision.models.registry import _REGISTRY, register_model

    if "tiny" not in _REGISTRY:
        register_model("tiny", image_size=16)(tiny)
        register_model("tiny_no_bn", image_size=16)(functools.partial(tiny, batch_norm=False))


def split_cpu(count: int) -> None:
    """`count` logical CPU devices, and MultiWorkerMirroredStrategy using all of them (see the docstring)."""
    import tensorflow as tf
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    original = collective.CollectiveAllReduceExtended._initialize_local_devices

    def every_cpu(self, cluster_resolver, worker_device):
        devices, kind = original(self, cluster_resolver, worker_device)
        if kind == "CPU":
            devices = tuple(f"{worker_device}/device:CPU:{i}" for i in range(count))
        return devices, kind

    collective.CollectiveAllReduceExtended._initialize_local_devices = every_cpu


if __name__ == "__main__":
    split_cpu(int(sys.argv[1]))
    register_tiny()
    from hpcvision.cli import main

    sys.exit(main(sys.argv[2:]))
