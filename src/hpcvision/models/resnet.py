"""ResNet-18/34/50/101/152 (He et al. 2015) in the "v1.5" form torchvision and TF's official models use:
the stride of a bottleneck sits on its 3x3 conv, convolutions carry no bias (BatchNorm follows each),
and the last BatchNorm of every residual block starts at gamma = 0 (Goyal et al. 2017), so each block
starts as the identity. Strided convolutions pad symmetrically, as in the paper's reference code."""

from __future__ import annotations

import functools

import keras
from keras import layers

from hpcvision.models.common import check_image_size, conv_bn, image_input, logits_layer
from hpcvision.models.registry import register_model

MIN_IMAGE_SIZE = 32
STAGE_WIDTHS = (64, 128, 256, 512)
# depth -> (bottleneck blocks?, blocks per stage, published parameters in millions at 1000 classes)
CONFIGS = {
    18: (False, (2, 2, 2, 2), 11.69),
    34: (False, (3, 4, 6, 3), 21.80),
    50: (True, (3, 4, 6, 3), 25.56),
    101: (True, (3, 4, 23, 3), 44.55),
    152: (True, (3, 8, 36, 3), 60.19),
}


def strided_conv_bn(x, filters: int, kernel: int, strides: int, name: str, **kwargs):
    """conv_bn whose padding is symmetric also when strided (Keras' "same" pads only bottom/right then)."""
    if strides == 1 or kernel == 1:
        return conv_bn(
            x,
            filters,
            kernel,
            strides=strides,
            padding="same" if kernel > 1 else "valid",
            name=name,
            **kwargs,
        )
    x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    return conv_bn(x, filters, kernel, strides=strides, padding="valid", name=name, **kwargs)


def basic_block(x, filters: int, strides: int, name: str, zero_init_residual: bool):
    """Two 3x3 convs plus the shortcut (ResNet-18/34)."""
    shortcut = _shortcut(x, filters, strides, name)
    y = strided_conv_bn(x, filters, 3, strides, f"{name}_conv1")
    y = conv_bn(y, filters, 3, activation=None, zero_gamma=zero_init_residual, name=f"{name}_conv2")
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def bottleneck_block(x, filters: int, strides: int, name: str, zero_init_residual: bool):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, plus the shortcut (ResNet-50/101/152)."""
    shortcut = _shortcut(x, filters * 4, strides, name)
    y = conv_bn(x, filters, 1, padding="valid", name=f"{name}_conv1")
    y = strided_conv_bn(y, filters, 3, strides, f"{name}_conv2")
    y = conv_bn(
        y,
        filters * 4,
        1,
        padding="valid",
        activation=None,
        zero_gamma=zero_init_residual,
        name=f"{name}_conv3",
    )
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def _shortcut(x, filters: int, strides: int, name: str):
    # Projection (1x1 conv + BN) only where the shape changes; identity otherwise.
    if strides == 1 and x.shape[-1] == filters:
        return x
    return conv_bn(x, filters, 1, strides=strides, padding="valid", activation=None, name=f"{name}_shortcut")


def build_resnet(
    depth: int, num_classes: int, image_size: int = 224, aux: bool = False, zero_init_residual: bool = True
) -> keras.Model:
    """ResNet-`depth` for `num_classes` classes at `image_size` pixels (no auxiliary heads)."""
    if depth not in CONFIGS:
        raise ValueError(f"no ResNet of depth {depth} (choose from {', '.join(map(str, CONFIGS))})")
    check_image_size(f"resnet{depth}", image_size, MIN_IMAGE_SIZE)
    bottleneck, blocks_per_stage, _ = CONFIGS[depth]
    block = bottleneck_block if bottleneck else basic_block
    inputs = image_input(image_size)
    x = strided_conv_bn(inputs, 64, 7, 2, "conv1")
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, (filters, blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage, strict=True), start=2):
        for index in range(1, blocks + 1):
            strides = 2 if index == 1 and stage > 2 else 1
            x = block(x, filters, strides, f"stage{stage}_block{index}", zero_init_residual)
    x = layers.GlobalAveragePooling2D(name="features")(x)  # the pooled embedding
    return keras.Model(inputs, logits_layer(num_classes)(x), name=f"resnet{depth}")


def _register(depth: int):
    return register_model(f"resnet{depth}", image_size=224, params_published=CONFIGS[depth][2])(
        functools.partial(build_resnet, depth)
    )


resnet18 = _register(18)
resnet34 = _register(34)
resnet50 = _register(50)
resnet101 = _register(101)
resnet152 = _register(152)
