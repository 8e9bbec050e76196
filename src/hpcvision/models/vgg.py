"""VGG-16 (Simonyan & Zisserman, configuration D): 13 3x3 convolutions in five blocks and three dense
layers, 138.36 M parameters at 1000 classes / 224 px, identical in shape to `keras.applications.VGG16`."""

from __future__ import annotations

import keras
from keras import layers

from hpcvision.models.common import CONV_INIT, check_image_size, image_input, logits_layer, pool_to_grid
from hpcvision.models.registry import register_model

# Filters per block, and how many 3x3 convolutions each block has.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
MIN_IMAGE_SIZE = 32  # five 2x2 poolings


@register_model("vgg16", image_size=224, params_published=138.36)
def vgg16(num_classes: int, image_size: int = 224, aux: bool = False, dropout: float = 0.5) -> keras.Model:
    """VGG-16 for `num_classes` classes at `image_size` pixels (no auxiliary heads; `aux` is ignored).

    The last feature map is pooled to 7x7 as at 224 px, so the dense layers keep their size at any input."""
    check_image_size("vgg16", image_size, MIN_IMAGE_SIZE)
    inputs = image_input(image_size)
    x = inputs
    for block, (filters, convs) in enumerate(VGG16_BLOCKS, start=1):
        for index in range(1, convs + 1):
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                activation="relu",
                kernel_initializer=CONV_INIT,
                name=f"block{block}_conv{index}",
            )(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    x = pool_to_grid(x, 7, "pool_to_7x7")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4096, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="fc1_dropout")(x)
    x = layers.Dense(4096, activation="relu", name="fc2")(x)
    # fc2's output is the embedding; dropout is the identity at inference.
    x = layers.Dropout(dropout, name="features")(x)
    return keras.Model(inputs, logits_layer(num_classes)(x), name="vgg16")
