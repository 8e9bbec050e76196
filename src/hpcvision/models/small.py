"""`small`: a fast batch-normalised CNN for 28-64 px images (the demo's Fashion-MNIST network).

Three conv stages (32-64-128 filters, one 3x3 conv + BN + ReLU + 2x2 max-pool each), a fixed 3x3
grid, a 256-unit BN dense layer (the embedding) and the "logits" layer: 0.39 M parameters at 10
classes. Why this shape: on 2 CPU cores the step time of a small net is dominated by the full-resolution
layers, so the first stage has one conv only; a dense head learns faster in a few epochs than global
average pooling does. See configs/demo.yaml for the recipe and what it reaches.
"""

from __future__ import annotations

import keras
from keras import layers

from hpcvision.models.common import (
    BN_MOMENTUM,
    check_image_size,
    conv_bn,
    image_input,
    logits_layer,
    pool_to_grid,
)
from hpcvision.models.registry import register_model

# Three 2x2 poolings must leave at least a 3x3 map for the head's grid.
MIN_IMAGE_SIZE = 24
WIDTHS = (32, 64, 128)
GRID = 3


@register_model("small", image_size=28, params_published=None)
def small(num_classes: int, image_size: int = 28, aux: bool = False, *, widths: tuple[int, ...] = WIDTHS,
          convs: tuple[int, ...] = (1, 1, 1), embedding: int = 256, dropout: float = 0.3) -> keras.Model:
    """The small CNN for `num_classes` classes at `image_size` pixels (no auxiliary heads; `aux` ignored);
    `convs`: 3x3 convs per stage (a stage's second one is `conv<stage>b`)."""
    check_image_size("small", image_size, MIN_IMAGE_SIZE)
    inputs = image_input(image_size)
    x = inputs
    for stage, (filters, count) in enumerate(zip(widths, convs, strict=True), start=1):
        for index in range(count):
            x = conv_bn(x, filters, 3, name=f"conv{stage}{'abcd'[index] if index else ''}")
        x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    x = pool_to_grid(x, GRID, f"pool_to_{GRID}x{GRID}")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding, use_bias=False, name="features_dense")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="features_bn")(x)
    x = layers.Activation("relu", name="features")(x)
    outputs = logits_layer(num_classes)(x)
    return keras.Model(inputs, outputs, name="small")
