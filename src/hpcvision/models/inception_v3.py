"""Inception v3 (Szegedy et al. 2016) in the TF-slim layout that `keras.applications.InceptionV3` also
follows: 23.85 M parameters at 1000 classes without the auxiliary head, 27.2 M with it. BatchNorm has no
gamma (a ReLU follows each one), epsilon 1e-3. Default input 299 px; works from 75 px."""

from __future__ import annotations

import keras
from keras import layers

from hpcvision.models.common import check_image_size, image_input, logits_layer
from hpcvision.models.common import conv_bn as _conv_bn
from hpcvision.models.registry import register_model

MIN_IMAGE_SIZE = 75  # the stem and the two grid reductions use unpadded 3x3 convolutions


def conv_bn(x, filters: int, kernel, name: str, strides: int = 1, padding: str = "same"):
    """Inception v3's conv unit: conv without bias, BN without scale, ReLU."""
    return _conv_bn(
        x, filters, kernel, strides=strides, padding=padding, epsilon=1e-3, scale=False, name=name
    )


def avg_pool_branch(x, filters: int, name: str):
    x = layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    return conv_bn(x, filters, 1, f"{name}_pool_proj")


def block_35x35(x, pool_filters: int, name: str):
    """Figure 5 module (the 35x35 grid): 1x1, 5x5, double 3x3 and pooled branches."""
    b1 = conv_bn(x, 64, 1, f"{name}_1x1")
    b5 = conv_bn(x, 48, 1, f"{name}_5x5_reduce")
    b5 = conv_bn(b5, 64, 5, f"{name}_5x5")
    b3 = conv_bn(x, 64, 1, f"{name}_3x3dbl_reduce")
    b3 = conv_bn(b3, 96, 3, f"{name}_3x3dbl_1")
    b3 = conv_bn(b3, 96, 3, f"{name}_3x3dbl_2")
    return layers.Concatenate(name=name)([b1, b5, b3, avg_pool_branch(x, pool_filters, name)])


def reduce_35_to_17(x, name: str):
    """Grid reduction 35x35 -> 17x17 with parallel strided conv and pooling branches."""
    b3 = conv_bn(x, 384, 3, f"{name}_3x3", strides=2, padding="valid")
    bd = conv_bn(x, 64, 1, f"{name}_3x3dbl_reduce")
    bd = conv_bn(bd, 96, 3, f"{name}_3x3dbl_1")
    bd = conv_bn(bd, 96, 3, f"{name}_3x3dbl_2", strides=2, padding="valid")
    pool = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return layers.Concatenate(name=name)([b3, bd, pool])


def block_17x17(x, width: int, name: str):
    """Figure 6 module (the 17x17 grid): 7x7 convolutions factorised into 1x7 and 7x1."""
    b1 = conv_bn(x, 192, 1, f"{name}_1x1")
    b7 = conv_bn(x, width, 1, f"{name}_7x7_reduce")
    b7 = conv_bn(b7, width, (1, 7), f"{name}_7x7_1")
    b7 = conv_bn(b7, 192, (7, 1), f"{name}_7x7_2")
    bd = conv_bn(x, width, 1, f"{name}_7x7dbl_reduce")
    bd = conv_bn(bd, width, (7, 1), f"{name}_7x7dbl_1")
    bd = conv_bn(bd, width, (1, 7), f"{name}_7x7dbl_2")
    bd = conv_bn(bd, width, (7, 1), f"{name}_7x7dbl_3")
    bd = conv_bn(bd, 192, (1, 7), f"{name}_7x7dbl_4")
    return layers.Concatenate(name=name)([b1, b7, bd, avg_pool_branch(x, 192, name)])


def reduce_17_to_8(x, name: str):
    """Grid reduction 17x17 -> 8x8."""
    b3 = conv_bn(x, 192, 1, f"{name}_3x3_reduce")
    b3 = conv_bn(b3, 320, 3, f"{name}_3x3", strides=2, padding="valid")
    b7 = conv_bn(x, 192, 1, f"{name}_7x7x3_reduce")
    b7 = conv_bn(b7, 192, (1, 7), f"{name}_7x7x3_1")
    b7 = conv_bn(b7, 192, (7, 1), f"{name}_7x7x3_2")
    b7 = conv_bn(b7, 192, 3, f"{name}_7x7x3_3", strides=2, padding="valid")
    pool = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return layers.Concatenate(name=name)([b3, b7, pool])


def block_8x8(x, name: str):
    """Figure 7 module (the 8x8 grid): 3x3 convolutions split into parallel 1x3 and 3x1 outputs."""
    b1 = conv_bn(x, 320, 1, f"{name}_1x1")
    b3 = conv_bn(x, 384, 1, f"{name}_3x3_reduce")
    b3 = layers.Concatenate(name=f"{name}_3x3")(
        [conv_bn(b3, 384, (1, 3), f"{name}_3x3_1x3"), conv_bn(b3, 384, (3, 1), f"{name}_3x3_3x1")]
    )
    bd = conv_bn(x, 448, 1, f"{name}_3x3dbl_reduce")
    bd = conv_bn(bd, 384, 3, f"{name}_3x3dbl_1")
    bd = layers.Concatenate(name=f"{name}_3x3dbl")(
        [conv_bn(bd, 384, (1, 3), f"{name}_3x3dbl_1x3"), conv_bn(bd, 384, (3, 1), f"{name}_3x3dbl_3x1")]
    )
    return layers.Concatenate(name=name)([b1, b3, bd, avg_pool_branch(x, 192, name)])


def aux_classifier(x, num_classes: int):
    """Auxiliary head on the 17x17 grid: 5x5/3 average pool, 1x1 conv 128, 5x5 conv 768, logits.

    On grids smaller than 17x17 (inputs under 299 px) the pooling shrinks and the 5x5 conv pads, then
    a global average keeps the head's weights the same shape at every resolution."""
    grid = x.shape[1]
    x = layers.AveragePooling2D(min(5, grid), strides=3, name="aux_pool")(x)
    x = conv_bn(x, 128, 1, "aux_conv1")
    x = conv_bn(x, 768, 5, "aux_conv2", padding="valid" if x.shape[1] >= 5 else "same")
    x = layers.GlobalAveragePooling2D(name="aux_flatten")(x)
    return logits_layer(num_classes, name="aux_logits")(x)


@register_model("inception_v3", image_size=299, has_aux=True, params_published=23.8)
def inception_v3(
    num_classes: int, image_size: int = 299, aux: bool = False, dropout: float = 0.2
) -> keras.Model:
    """Inception v3 for `num_classes` classes; with `aux=True` it returns [logits, aux_logits]."""
    check_image_size("inception_v3", image_size, MIN_IMAGE_SIZE)
    inputs = image_input(image_size)
    x = conv_bn(inputs, 32, 3, "conv1", strides=2, padding="valid")
    x = conv_bn(x, 32, 3, "conv2", padding="valid")
    x = conv_bn(x, 64, 3, "conv3")
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = conv_bn(x, 80, 1, "conv4", padding="valid")
    x = conv_bn(x, 192, 3, "conv5", padding="valid")
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    x = block_35x35(x, 32, "mixed0")
    x = block_35x35(x, 64, "mixed1")
    x = block_35x35(x, 64, "mixed2")
    x = reduce_35_to_17(x, "mixed3")
    for index, width in enumerate((128, 160, 160, 192), start=4):
        x = block_17x17(x, width, f"mixed{index}")
    aux_logits = aux_classifier(x, num_classes) if aux else None
    x = reduce_17_to_8(x, "mixed8")
    x = block_8x8(x, "mixed9")
    x = block_8x8(x, "mixed10")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # The pooled 2048-d embedding; dropout is the identity at inference.
    x = layers.Dropout(dropout, name="features")(x)
    logits = logits_layer(num_classes)(x)
    return keras.Model(inputs, [logits, aux_logits] if aux else logits, name="inception_v3")
