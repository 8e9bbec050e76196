"""Building blocks shared by the model families (Keras 3 only, channels-last)."""

from __future__ import annotations

import keras
from keras import layers

from hpcvision.errors import UserError

# PyTorch's BN momentum 0.1 is Keras' 0.9: the running statistics follow training closely enough
# for from-scratch runs of a few epochs (Keras' default 0.99 lags behind for thousands of steps).
BN_MOMENTUM = 0.9
CONV_INIT = "he_normal"


class ModelError(UserError, ValueError):
    """An unknown model or a size it cannot take: one line on the command line, a ValueError to callers."""


def check_image_size(model: str, image_size: int, minimum: int) -> None:
    """Raise ModelError when `image_size` is too small for the network's fixed-size stages."""
    if image_size < minimum:
        raise ModelError(f"{model} needs image_size >= {minimum} pixels (got {image_size})")


def conv_bn(
    x,
    filters: int,
    kernel: int | tuple[int, int],
    *,
    name: str,
    strides: int = 1,
    padding: str = "same",
    epsilon: float = 1e-5,
    scale: bool = True,
    activation: str | None = "relu",
    zero_gamma: bool = False,
):
    """Conv (no bias: BN's beta replaces it) -> BatchNorm -> optional activation."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=CONV_INIT,
        name=name,
    )(x)
    x = layers.BatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=epsilon,
        scale=scale,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=f"{name}_bn",
    )(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def pool_to_grid(x, size: int, name: str):
    """Average-pool to a fixed `size` x `size` grid (PyTorch's adaptive pooling), so the dense
    layers after it have the same shape at every input resolution; a no-op at the published size."""
    if tuple(x.shape[1:3]) == (size, size):
        return x
    return layers.AdaptiveAveragePooling2D((size, size), name=name)(x)


def logits_layer(num_classes: int, name: str = "logits") -> layers.Dense:
    """The final classifier: float32 even under mixed precision, so the loss never sees bf16 logits."""
    return layers.Dense(num_classes, dtype="float32", name=name)


def image_input(image_size: int) -> keras.KerasTensor:
    """The model input: normalised float images, NHWC."""
    return keras.Input(shape=(image_size, image_size, 3), name="images")
