"""GoogLeNet / Inception v1 (Szegedy et al. 2014, Table 1) with BatchNorm after every convolution in
place of LRN (as torchvision does, so it trains from scratch without the paper's tricks), the paper's
5x5 branch, and the two auxiliary classifiers after inception 4a and 4d when `aux=True`."""

from __future__ import annotations

import keras
from keras import layers

from hpcvision.models.common import check_image_size, conv_bn, image_input, logits_layer, pool_to_grid
from hpcvision.models.registry import register_model

MIN_IMAGE_SIZE = 32

# Table 1 of the paper: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def inception_module(x, name: str):
    """Four parallel branches (1x1, 1x1->3x3, 1x1->5x5, pool->1x1) concatenated along channels."""
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = INCEPTION[name]
    prefix = f"inception{name}"
    branch1 = conv_bn(x, n1x1, 1, name=f"{prefix}_1x1")
    branch2 = conv_bn(x, n3x3_reduce, 1, name=f"{prefix}_3x3_reduce")
    branch2 = conv_bn(branch2, n3x3, 3, name=f"{prefix}_3x3")
    branch3 = conv_bn(x, n5x5_reduce, 1, name=f"{prefix}_5x5_reduce")
    branch3 = conv_bn(branch3, n5x5, 5, name=f"{prefix}_5x5")
    branch4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{prefix}_pool")(x)
    branch4 = conv_bn(branch4, pool_proj, 1, name=f"{prefix}_pool_proj")
    return layers.Concatenate(name=f"{prefix}_concat")([branch1, branch2, branch3, branch4])


def aux_classifier(x, num_classes: int, name: str):
    """Auxiliary head: pool to 4x4 (5x5/3 average pooling at 224 px), 1x1 conv, FC 1024, dropout 0.7."""
    x = pool_to_grid(x, 4, f"{name}_pool")
    x = conv_bn(x, 128, 1, name=f"{name}_conv")
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc")(x)
    x = layers.Dropout(0.7, name=f"{name}_dropout")(x)
    return logits_layer(num_classes, name=f"{name}_logits")(x)


@register_model("googlenet", image_size=224, has_aux=True, params_published=7.0)
def googlenet(
    num_classes: int, image_size: int = 224, aux: bool = False, dropout: float = 0.4
) -> keras.Model:
    """GoogLeNet for `num_classes` classes; with `aux=True` it returns [logits, aux1_logits, aux2_logits]."""
    check_image_size("googlenet", image_size, MIN_IMAGE_SIZE)
    inputs = image_input(image_size)
    x = conv_bn(inputs, 64, 7, strides=2, name="conv1")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = conv_bn(x, 64, 1, name="conv2_reduce")
    x = conv_bn(x, 192, 3, name="conv2")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    x = inception_module(x, "3a")
    x = inception_module(x, "3b")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool3")(x)
    x = inception_module(x, "4a")
    aux_outputs = [aux_classifier(x, num_classes, "aux1")] if aux else []
    for name in ("4b", "4c", "4d"):
        x = inception_module(x, name)
    if aux:
        aux_outputs.append(aux_classifier(x, num_classes, "aux2"))
    x = inception_module(x, "4e")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool4")(x)
    x = inception_module(x, "5a")
    x = inception_module(x, "5b")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # The pooled 1024-d embedding; dropout is the identity at inference.
    x = layers.Dropout(dropout, name="features")(x)
    logits = logits_layer(num_classes)(x)
    outputs = [logits, *aux_outputs] if aux else logits
    return keras.Model(inputs, outputs, name="googlenet")
