"""Preprocessing presets: what one image goes through for training, evaluation and serving.

- `train_image`: random crop (`augment`: inception over the stored boxes, pad_crop, or none), flip,
  resize, optional colour distortion (inception's), normalise; random choices from the stateless seeds
  the pipeline pairs with each record.
- `eval_image`: the central crop of a stored JPEG, resized and normalised.
- `crop_resized`: the one JPEG crop-and-resize of all three, decoded at 1/2, 1/4 or 1/8 scale in the DCT
  domain whenever the crop is still at least the output size there (PSNR against the full decode in
  tests/test_presets_ratio.py; speed in benchmarks/input_pipeline.py).
- `preprocess_for_eval` / `preprocess_pixels`: what an export or a loaded checkpoint serves (JPEG, PNG,
  GIF or BMP bytes; or pixels, resized only). Exports record only `normalize` and the crop fraction,
  so these take those two rather than a whole `InputConfig`.

Everything works per image: a 224 px image stays in cache through crop, flip, resize and normalisation,
where the same ops on whole float batches are memory-bound (measured slower).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from hpcvision.data.images import MAX_PIXELS
from hpcvision.data.input_config import InputConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 image -> float32 [image_size, image_size, 3] in 0..255."""
    # Casting first: TF's bilinear kernel is ~10% faster on float32 input than on uint8 (measured).
    return tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], method="bilinear")


def normalize_image(image: tf.Tensor, kind: str) -> tf.Tensor:
    """0..255 -> [0, 1] ("unit") or ImageNet-standardised, as one multiply-add per value."""
    if kind == "unit":
        return image * (1.0 / 255.0)
    scale = np.array([1.0 / (255.0 * s) for s in IMAGENET_STD], np.float32)
    shift = np.array([m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)], np.float32)
    if image.shape[-3:].is_fully_defined():
        # Full-size constants: a per-channel broadcast over [H, W, 3] is ~4x slower on CPU (measured).
        scale, shift = (np.broadcast_to(v, image.shape[-3:]).copy() for v in (scale, shift))
    return image * scale - shift


def inception_window(encoded: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, config: InputConfig) -> tf.Tensor:
    """[y, x, h, w] of a random crop of a JPEG covering part of a stored box [N, 4] (ymin, xmin, ymax, xmax)."""
    shape = tf.io.extract_jpeg_shape(encoded)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=boxes[tf.newaxis],
        seed=seed,
        min_object_covered=config.min_object_covered,
        aspect_ratio_range=tuple(config.aspect_ratio_range),
        area_range=tuple(config.area_range),
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    # Grow a too-small crop (tiny images) to min_crop_size, never past the image, and keep it inside.
    hw = tf.maximum(size[:2], tf.minimum(config.min_crop_size, shape[:2]))
    yx = tf.minimum(begin[:2], shape[:2] - hw)
    return tf.concat([yx, hw], 0)


# libjpeg's DCT-domain downscaling: the scaled image has ceil(H / r) x ceil(W / r) pixels, and pixel i
# stands for source pixels [i r, (i + 1) r), i.e. an area average, decoded at a fraction of the cost.
RATIOS = (1, 2, 4, 8)


def decode_ratio_index(hw: tf.Tensor, image_size: int) -> tf.Tensor:
    """Index in RATIOS of the largest ratio that keeps a crop of `hw` (h, w) >= `image_size` on both sides."""
    index = tf.constant(0)
    for ratio in RATIOS[1:]:  # they fit in order: 2 before 4 before 8
        index += tf.cast(tf.reduce_min(hw) >= ratio * image_size, tf.int32)
    return index


def _scaled_crop(encoded: tf.Tensor, window: tf.Tensor, image_size: int, flip: tf.Tensor, ratio: int) -> tf.Tensor:
    """The crop decoded at 1/`ratio` scale, then bilinear-sampled at the very points `resize` samples the
    full-size crop (half-pixel centres), so only the decoder's area average differs from the full path."""
    scaled_hw = tf.cast(-(-tf.io.extract_jpeg_shape(encoded)[:2] // ratio), tf.float32)  # ceil
    start, size = tf.cast(window[:2], tf.float32) / ratio, tf.cast(window[2:], tf.float32) / ratio
    first = tf.floor(start)
    last = tf.minimum(tf.math.ceil(start + size), scaled_hw)
    image = tf.io.decode_and_crop_jpeg(
        encoded, tf.cast(tf.concat([first, last - first], 0), tf.int32), channels=3, ratio=ratio)
    step = size / image_size  # >= 1 scaled pixel on both sides, as the ratio was chosen so
    # Output pixel j of `resize` on the full crop samples its centre, (start + (j + 0.5) step) in scaled
    # pixel edges; in the decoded crop's pixel centres that is start - first + (j + 0.5) step - 0.5.
    # crop_and_resize samples [begin, end] x (n - 1) of an n-pixel crop in S - 1 equal steps.
    begin = start - first + 0.5 * step - 0.5
    extent = tf.maximum(last - first - 1, 1.0)
    end = tf.minimum(begin + step * (image_size - 1), extent)  # float rounding must not sample past the edge
    begin, span = tf.maximum(begin, 0.0) / extent, end / extent
    box = tf.stack([begin[0], tf.where(flip, span[1], begin[1]), span[0], tf.where(flip, begin[1], span[1])])
    return tf.image.crop_and_resize(image[tf.newaxis], box[tf.newaxis], [0], [image_size, image_size])[0]


def crop_resized(encoded: tf.Tensor, window: tf.Tensor, image_size: int, flip: tf.Tensor | bool = False) -> tf.Tensor:
    """The crop `window` [y, x, h, w] of a JPEG, mirrored if `flip`, as float32 [S, S, 3] in 0..255.

    Decoded at 1/2, 1/4 or 1/8 scale when the crop stays at least S there (much cheaper), else in full.
    """
    flip = tf.convert_to_tensor(flip)
    # A header claiming more pixels than build accepts is refused here as well, as a record that does not
    # decode (the pipeline skips and counts it): at 1/8 scale a lying 65,000 px header would otherwise
    # "decode" into padding, where the full decode runs out of memory.
    shape = tf.cast(tf.io.extract_jpeg_shape(encoded), tf.int64)
    within = tf.debugging.assert_less_equal(shape[0] * shape[1], tf.constant(MAX_PIXELS, tf.int64),
                                            message=f"JPEG header claims more than {MAX_PIXELS:,} pixels")
    with tf.control_dependencies([within]):
        window = tf.identity(window)

    def full() -> tf.Tensor:
        image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)  # on uint8: fewer bytes to move
        return resize(image, image_size)

    def scaled(ratio: int):
        return lambda: _scaled_crop(encoded, window, image_size, flip, ratio)

    if len(RATIOS) == 1:  # scaled decoding off (benchmarks/input_pipeline.py's "ratio 1" baseline)
        image = full()
    else:
        # A cond before the switch: most crops of ImageNet-size photos into 224 px decode in full, and there
        # a 4-way switch_case cost the pipeline 5 % against the bare full path, the cond 2 % (2-core VM).
        index = decode_ratio_index(window[2:], image_size)
        image = tf.cond(index > 0, lambda: tf.switch_case(index - 1, [scaled(r) for r in RATIOS[1:]]), full)
    image.set_shape([image_size, image_size, 3])
    return image


def pad_crop(encoded: tf.Tensor, seed: tf.Tensor, image_size: int, pad: int) -> tf.Tensor:
    """CIFAR-style: the whole JPEG resized to S x S (uint8), reflect-padded by `pad`, random S x S crop."""
    image = tf.cast(tf.round(_central_resized(encoded, 1.0, image_size)), tf.uint8)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    return tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed=seed)


def _central_window(shape: tf.Tensor, fraction: float) -> tf.Tensor:
    """[y, x, h, w] of the central `fraction` of each side of an image of `shape` [H, W, ...]."""
    h = tf.maximum(tf.cast(tf.cast(shape[0], tf.float32) * fraction, tf.int32), 1)
    w = tf.maximum(tf.cast(tf.cast(shape[1], tf.float32) * fraction, tf.int32), 1)
    return tf.stack([(shape[0] - h) // 2, (shape[1] - w) // 2, h, w])


def _central_resized(encoded: tf.Tensor, fraction: float, image_size: int) -> tf.Tensor:
    """The central `fraction` of a JPEG (all of it at 1.0), resized to float32 [S, S, 3] in 0..255."""
    return crop_resized(encoded, _central_window(tf.io.extract_jpeg_shape(encoded), fraction), image_size)


def _central_crop_any(encoded: tf.Tensor, fraction: float) -> tf.Tensor:
    """The same crop of a PNG/GIF/BMP (decoded whole, then sliced)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    y, x, h, w = tf.unstack(_central_window(tf.shape(image), fraction))
    return image[y : y + h, x : x + w]


# Inception's colour distortion (the course's image_processing.distort_color): strengths of each op.
BRIGHTNESS_DELTA = 32.0 / 255.0
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 0.2
CONTRAST_RANGE = (0.5, 1.5)


def distort_color(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Float 0..255 -> brightness, saturation, hue, contrast in one of two random orders (the course's
    inception preprocessing), clipped back into 0..255. `seed`: a stateless pair."""
    seeds = [tf.random.experimental.stateless_fold_in(seed, k) for k in range(5)]
    image = image * (1.0 / 255.0)

    def brightness(x):
        return tf.image.stateless_random_brightness(x, BRIGHTNESS_DELTA, seeds[0])

    def saturation(x):
        return tf.image.stateless_random_saturation(x, *SATURATION_RANGE, seeds[1])

    def hue(x):
        return tf.image.stateless_random_hue(x, HUE_DELTA, seeds[2])

    def contrast(x):
        return tf.image.stateless_random_contrast(x, *CONTRAST_RANGE, seeds[3])

    def apply(ops):
        x = image
        for op in ops:
            x = op(x)
        return x

    first = tf.random.stateless_uniform([], seeds[4]) < 0.5
    image = tf.cond(first, lambda: apply([brightness, saturation, hue, contrast]),
                    lambda: apply([brightness, contrast, saturation, hue]))
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def train_image(encoded: tf.Tensor, boxes: tf.Tensor | None, seeds: tf.Tensor, image_size: int,
                config: InputConfig) -> tf.Tensor:
    """A stored JPEG as training sees it: float32 [S,S,3] normalised (0..255 when batch augmentations follow).

    `boxes` [N, 4] are read by the inception crop only; `seeds` are 4 ints, the crop pair then the flip pair.
    """
    crop_seed, flip_seed = seeds[:2], seeds[2:]
    # The draw of tf.image.stateless_random_flip_left_right, so a seed flips the same images as before.
    flip = tf.random.stateless_uniform([], seed=flip_seed) < 0.5 if config.flip else tf.constant(False)
    if config.augment == "inception":
        image = crop_resized(encoded, inception_window(encoded, boxes, crop_seed, config), image_size, flip)
    elif config.augment == "pad_crop":
        image = pad_crop(encoded, crop_seed, image_size, config.pad_pixels(image_size))
        image = tf.cast(tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image), tf.float32)
    else:
        image = _central_resized(encoded, config.eval_central_fraction(), image_size)
    if config.color_distortion:  # its seed pair derived from the flip's, so the crop and flip stay as they were
        image = distort_color(image, tf.random.experimental.stateless_fold_in(flip_seed, 1))
    if config.augments_batches():  # Keras' batch layers take 0..255 pixels; batch_augment normalises after them
        return image
    return normalize_image(image, config.normalize)


def eval_image(encoded: tf.Tensor, image_size: int, config: InputConfig) -> tf.Tensor:
    """A stored JPEG as evaluation sees it: the central crop, resized and normalised."""
    return normalize_image(_central_resized(encoded, config.eval_central_fraction(), image_size), config.normalize)


def preprocess_for_eval(
    encoded: tf.Tensor, image_size: int, *, normalize: str = "imagenet", central_fraction: float = 0.875
) -> tf.Tensor:
    """Encoded image bytes (JPEG, or PNG/GIF/BMP) -> float32 [S,S,3] normalised, as evaluation sees it."""
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: _central_resized(encoded, central_fraction, image_size),
        lambda: resize(_central_crop_any(encoded, central_fraction), image_size),
    )
    image.set_shape([image_size, image_size, 3])
    return normalize_image(image, normalize)


def preprocess_pixels(images: tf.Tensor, image_size: int, *, normalize: str = "imagenet") -> tf.Tensor:
    """Float pixels [N,H,W,3] in 0..255 -> resized and normalised [N,S,S,3] (no crop)."""
    return normalize_image(tf.image.resize(tf.cast(images, tf.float32), [image_size, image_size]), normalize)

