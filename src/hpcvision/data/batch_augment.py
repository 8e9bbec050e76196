"""Training augmentations of whole batches, from Keras' own layers: RandAugment, random erasing, MixUp, CutMix.

`hpcvision.data.pipeline` maps the function of `batch_augmenter` over each replica's training batch.
The per-image preset (`presets.train_image`) leaves the pixels in 0..255 when one of these is on, since
Keras' layers take a value range, and the function normalises after them. MixUp and CutMix turn the
labels into class distributions [B, C], which the loss takes as they are (`hpcvision.train.optim`).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from hpcvision.data.input_config import InputConfig
from hpcvision.data.presets import normalize_image

PIXELS = (0, 255)
# Input is prepared in float32 whatever the model's mixed-precision policy (bfloat16 pixels and mixed labels
# would also make MixUp's and CutMix's outputs differ in type).
PRECISION = "float32"


def batch_augmenter(config: InputConfig, num_classes: int, seed: int | None) -> Callable | None:
    """(images 0..255 [B,S,S,3], labels [B]) -> (normalised images, labels or their mixtures [B, C]); None
    when no batch augmentation is on."""
    if not config.augments_batches():
        return None
    import keras

    def seeded(offset: int) -> int | None:
        return None if seed is None else seed + offset

    randaugment = erasing = mixup = cutmix = None
    if config.randaugment_ops:
        randaugment = keras.layers.RandAugment(value_range=PIXELS, num_ops=config.randaugment_ops,
                                               factor=config.randaugment_magnitude, seed=seeded(1), dtype=PRECISION)
    if config.random_erasing:  # Keras draws the probability from U(low, high): both ends at ours
        erasing = keras.layers.RandomErasing(factor=(config.random_erasing,) * 2, value_range=PIXELS,
                                             seed=seeded(2), dtype=PRECISION)
    if config.mixup_alpha:
        mixup = keras.layers.MixUp(alpha=config.mixup_alpha, seed=seeded(3), dtype=PRECISION)
    if config.cutmix_alpha:
        cutmix = keras.layers.CutMix(factor=config.cutmix_alpha, seed=seeded(4), dtype=PRECISION)

    def mix(images, labels):
        data = {"images": images, "labels": tf.one_hot(labels, num_classes)}
        if mixup and cutmix:
            cut = tf.random.uniform([], seed=seeded(5)) < config.mix_switch_prob
            data = tf.cond(cut, lambda: cutmix(data, training=True), lambda: mixup(data, training=True))
        else:
            data = (mixup or cutmix)(data, training=True)
        return data["images"], data["labels"]

    def augment(images, labels):
        if randaugment is not None:  # per image: Keras' layer draws its operations once per call
            images = tf.map_fn(lambda image: randaugment(image, training=True), images)
        if erasing is not None:
            images = erasing(images, training=True)
        if mixup or cutmix:
            images, labels = mix(images, labels)
        return normalize_image(tf.cast(images, tf.float32), config.normalize), labels

    return augment
