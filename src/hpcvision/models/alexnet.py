"""AlexNet as torchvision defines it: the single-tower variant of Krizhevsky's "one weird trick" paper
(64-192-384-256-256 filters, no LRN), 61.1 M parameters at 1000 classes."""

from __future__ import annotations

import keras
from keras import layers

from hpcvision.models.common import CONV_INIT, check_image_size, image_input, logits_layer, pool_to_grid
from hpcvision.models.registry import register_model

# Smallest input whose third max-pool still has a 3x3 window to pool.
MIN_IMAGE_SIZE = 63


def _conv(x, filters: int, kernel: int, name: str, strides: int = 1, padding: str = "same"):
    return layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        activation="relu",
        kernel_initializer=CONV_INIT,
        name=name,
    )(x)


@register_model("alexnet", image_size=224, params_published=61.10)
def alexnet(num_classes: int, image_size: int = 224, aux: bool = False, dropout: float = 0.5) -> keras.Model:
    """AlexNet for `num_classes` classes at `image_size` pixels (no auxiliary heads; `aux` is ignored)."""
    check_image_size("alexnet", image_size, MIN_IMAGE_SIZE)
    inputs = image_input(image_size)
    x = layers.ZeroPadding2D(2, name="conv1_pad")(inputs)
    x = _conv(x, 64, 11, "conv1", strides=4, padding="valid")
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = _conv(x, 192, 5, "conv2")
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = _conv(x, 384, 3, "conv3")
    x = _conv(x, 256, 3, "conv4")
    x = _conv(x, 256, 3, "conv5")
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)
    x = pool_to_grid(x, 6, "pool_to_6x6")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="fc6_dropout")(x)
    x = layers.Dense(4096, activation="relu", name="fc6")(x)
    x = layers.Dropout(dropout, name="fc7_dropout")(x)
    x = layers.Dense(4096, activation="relu", name="features")(x)  # fc7: the embedding
    return keras.Model(inputs, logits_layer(num_classes)(x), name="alexnet")
