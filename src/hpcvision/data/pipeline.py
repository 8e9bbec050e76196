"""tf.data input from the TFRecord shards `hpcvision data build` writes.

`make_dataset` is what training, evaluation and the benchmarks read: files sharded per worker,
interleaved, shuffled, parsed, cropped (training: a random crop over the stored boxes, decoded with the
fused `decode_and_crop_jpeg`; evaluation: a central crop), flipped, resized, normalised and batched.
Random choices use stateless ops seeded per element, so a given `seed` gives the same batches on every
run even with parallel map calls.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from hpcvision.data.shards import manifest_path, read_manifest
from hpcvision.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "unit")
AUGMENTATIONS = ("inception", "pad_crop", "none")
AUTOTUNE = tf.data.AUTOTUNE

_BOX_KEYS = ("image/object/bbox/ymin", "image/object/bbox/xmin", "image/object/bbox/ymax", "image/object/bbox/xmax")
# The keys the pipeline reads; their parse spec comes from hpcvision.data.records (one schema).
_NEEDED_KEYS = ("image/encoded", "image/class/label", *_BOX_KEYS)


def _spec() -> dict[str, Any]:
    from hpcvision.data.records import feature_spec

    return {key: value for key, value in feature_spec().items() if key in _NEEDED_KEYS}


def _parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialised record -> the keys the pipeline reads, box lists as dense 1-D tensors."""
    features = tf.io.parse_single_example(serialized, _spec())
    return {key: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for key, v in features.items()}


def _parse_batch(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A vector of records at once (about twice as fast per record); box lists as ragged rows."""
    features = tf.io.parse_example(serialized, _spec())
    return {
        key: tf.RaggedTensor.from_sparse(v) if isinstance(v, tf.SparseTensor) else v for key, v in features.items()
    }


def _boxes(features: dict[str, tf.Tensor]) -> tf.Tensor:
    """Stored boxes as [N, 4] (ymin, xmin, ymax, xmax), the order tf.image box ops take."""
    return tf.stack([features[key] for key in _BOX_KEYS], axis=-1)


def _inception_crop(encoded, boxes, seed, *, area_range, aspect_ratio_range, min_object_covered, min_crop_size):
    """Random crop covering part of a stored box, decoded with the fused JPEG decoder."""
    shape = tf.io.extract_jpeg_shape(encoded)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=boxes[tf.newaxis],
        seed=seed,
        min_object_covered=min_object_covered,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    # Grow a too-small crop (tiny images) to min_crop_size, never past the image, and keep it inside.
    hw = tf.maximum(size[:2], tf.minimum(min_crop_size, shape[:2]))
    yx = tf.minimum(begin[:2], shape[:2] - hw)
    return tf.image.decode_and_crop_jpeg(encoded, tf.concat([yx, hw], 0), channels=3)


def _central_window(shape: tf.Tensor, fraction: float) -> tf.Tensor:
    """[y, x, h, w] of the central `fraction` of each side of an image of `shape` [H, W, ...]."""
    h = tf.maximum(tf.cast(tf.cast(shape[0], tf.float32) * fraction, tf.int32), 1)
    w = tf.maximum(tf.cast(tf.cast(shape[1], tf.float32) * fraction, tf.int32), 1)
    return tf.stack([(shape[0] - h) // 2, (shape[1] - w) // 2, h, w])


def _central_crop_jpeg(encoded: tf.Tensor, fraction: float) -> tf.Tensor:
    """The central crop of a JPEG, decoded with the fused JPEG decoder."""
    window = _central_window(tf.io.extract_jpeg_shape(encoded), fraction)
    return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)


def _central_crop_any(encoded: tf.Tensor, fraction: float) -> tf.Tensor:
    """The same crop of a PNG/GIF/BMP (decoded whole, then sliced)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    y, x, h, w = tf.unstack(_central_window(tf.shape(image), fraction))
    return image[y : y + h, x : x + w]


def eval_central_fraction(augment: str = "inception", central_fraction: float | None = None) -> float:
    """The evaluation crop that matches a training augmentation: 0.875 after "inception", else 1.0."""
    if central_fraction is not None:
        return float(central_fraction)
    return 0.875 if augment == "inception" else 1.0


def preprocess_for_eval(
    encoded: tf.Tensor, image_size: int, *, normalize: str = "imagenet", central_fraction: float = 0.875
) -> tf.Tensor:
    """Encoded image bytes (JPEG, or PNG/GIF/BMP) -> float32 [S,S,3] normalised, as evaluation sees it."""
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: _central_crop_jpeg(encoded, central_fraction),
        lambda: _central_crop_any(encoded, central_fraction),
    )
    image = _resize(image, image_size)
    image.set_shape([image_size, image_size, 3])
    return _normalize(image, normalize)


def preprocess_pixels(images: tf.Tensor, image_size: int, *, normalize: str = "imagenet") -> tf.Tensor:
    """Float pixels [N,H,W,3] in 0..255 -> resized and normalised [N,S,S,3] (no crop)."""
    return _normalize(tf.image.resize(tf.cast(images, tf.float32), [image_size, image_size]), normalize)


PREPROCESSING_KWARGS = (
    "normalize", "augment", "area_range", "aspect_ratio_range", "min_object_covered",
    "min_crop_size", "pad", "central_fraction", "flip",
)


def config_kwargs(config: Any) -> dict[str, Any]:
    """make_dataset's preprocessing keywords from a config: its fields named like them (None = default).

    Training and evaluation both pass these, so evaluation crops and normalises as training did.
    """
    kwargs = {}
    for key in PREPROCESSING_KWARGS:
        value = getattr(config, key, None)
        if value is not None:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return kwargs


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 image -> float32 [image_size, image_size, 3] in 0..255."""
    # Casting first: TF's bilinear kernel is ~10% faster on float32 input than on uint8 (measured).
    return tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], method="bilinear")


def _normalize(image: tf.Tensor, normalize: str) -> tf.Tensor:
    """0..255 -> [0, 1] ("unit") or ImageNet-standardised, as one multiply-add per value."""
    if normalize == "unit":
        return image * (1.0 / 255.0)
    scale = np.array([1.0 / (255.0 * s) for s in IMAGENET_STD], np.float32)
    shift = np.array([m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)], np.float32)
    if image.shape[-3:].is_fully_defined():
        # Full-size constants: a per-channel broadcast over [H, W, 3] is ~4x slower on CPU (measured).
        scale, shift = (np.broadcast_to(v, image.shape[-3:]).copy() for v in (scale, shift))
    return image * scale - shift


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _shard_files(files: list[str], input_context) -> tuple[list[str], bool]:
    """This worker's files; True when there are too few files and records must be sharded instead."""
    if input_context is None or input_context.num_input_pipelines == 1:
        return files, False
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) >= n:
        return files[i::n], False
    log.warning(
        "%d shard files for %d input pipelines: every worker reads all files and keeps every %d-th "
        "record (slower; write at least as many shards as workers)", len(files), n, n
    )
    return files, True


def synthetic_dataset(batch_size: int, image_size: int, num_classes: int, *, seed: int | None = None,
                      pipeline_id: int = 0, repeat: bool = True) -> tf.data.Dataset:
    """One fixed random batch per input pipeline, repeated: no input cost, and a model can still fit it.

    Stateless ops (no tf.random.Generator variable), so it builds inside a strategy's dataset function
    and a parameter-server worker's traced one alike.
    """
    pair = [int(seed or 0), pipeline_id]
    images = tf.random.stateless_normal([batch_size, image_size, image_size, 3], seed=pair)
    labels = tf.random.stateless_uniform([batch_size], seed=pair, maxval=num_classes, dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels))
    return dataset.repeat() if repeat else dataset


def make_dataset(
    data_dir: str | Path | None,
    name: str,
    *,
    training: bool,
    batch_size: int,
    image_size: int,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    global_batch_size: int | None = None,
    label_offset: int | None = None,
    synthetic: bool = False,
    num_classes: int | None = None,
    repeat: bool | None = None,
    normalize: str = "imagenet",
    augment: str = "inception",
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    min_object_covered: float = 0.1,
    min_crop_size: int = 8,
    pad: int | None = None,
    central_fraction: float | None = None,
    flip: bool = True,
    shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
    """Batches of (images float32 [B,S,S,3] normalised, labels int32 [B] 0-based) from `DIR/<name>-*`.

    `batch_size` is per replica (what one `strategy.run` call sees); pass `global_batch_size` with an
    `input_context` to have it split by `input_context.get_per_replica_batch_size` instead.
    Training repeats forever and drops the last partial batch; evaluation reads every record once.
    `augment`: "inception" (random crop over the boxes, flip), "pad_crop" (resize, pad by `pad` px,
    random crop back, flip: CIFAR-style, for 28-64 px images) or "none" (resize only).
    Evaluation crops the central `central_fraction` (0.875 for "inception", else the whole image).
    """
    _check_choice("normalize", normalize, NORMALIZATIONS)
    _check_choice("augment", augment, AUGMENTATIONS)
    if input_context is not None and global_batch_size is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
    repeat = training if repeat is None else repeat
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    element_seed = None if seed is None else seed + 1000 * pipeline_id

    manifest = read_manifest(data_dir, name) if data_dir is not None and not (synthetic and num_classes) else None
    if synthetic:
        classes = num_classes or (manifest or {}).get("num_classes")
        if not classes:
            raise ValueError("synthetic input needs num_classes (or a manifest that has it)")
        return synthetic_dataset(batch_size, image_size, int(classes), seed=seed, pipeline_id=pipeline_id,
                                 repeat=repeat)
    if manifest is None:
        raise ValueError("make_dataset needs data_dir unless synthetic=True")
    offset = manifest["label_offset"] if label_offset is None else label_offset

    all_files = [shard["path"] for shard in manifest["shards"]]
    counts = {shard["path"]: int(shard.get("count", 0)) for shard in manifest["shards"]}
    if not all_files:
        raise UserError(f"{manifest_path(data_dir, name)}: lists no shards")
    files, shard_records = _shard_files(all_files, input_context)
    records = sum(counts[f] for f in files)
    if shard_records:
        records = math.ceil(records / input_context.num_input_pipelines)

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training and not shard_records:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    deterministic = (seed is not None) or not training
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
        cycle_length=min(len(files), 16),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic or shard_records,
    )
    if shard_records:
        dataset = dataset.shard(input_context.num_input_pipelines, pipeline_id)
    if training:
        dataset = dataset.shuffle(max(1, min(records, shuffle_buffer)), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    # Parse 64 records per op, then back to single records for the per-image work.
    dataset = dataset.batch(64).map(_parse_batch, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    dataset = dataset.unbatch()
    # Two independent stateless seed pairs per element (crop, flip); a new sequence each epoch.
    seeds = tf.data.Dataset.random(seed=element_seed, rerandomize_each_iteration=True).batch(4)
    dataset = tf.data.Dataset.zip((dataset, seeds))

    fraction = eval_central_fraction(augment, central_fraction)
    pad_px = pad if pad is not None else max(1, image_size // 8)
    flipping = training and flip and augment != "none"

    def preprocess(features, seeds):
        # Everything per image: a 224 px image stays in cache through crop, flip, resize and
        # normalisation, where the same ops on whole float batches are memory-bound (measured slower).
        encoded = features["image/encoded"]
        crop_seed, flip_seed = seeds[:2], seeds[2:]
        if training and augment == "inception":
            image = _inception_crop(
                encoded, _boxes(features), crop_seed, area_range=area_range,
                aspect_ratio_range=aspect_ratio_range, min_object_covered=min_object_covered,
                min_crop_size=min_crop_size,
            )
        elif training and augment == "pad_crop":
            image = tf.cast(tf.round(_resize(tf.io.decode_jpeg(encoded, channels=3), image_size)), tf.uint8)
            image = tf.pad(image, [[pad_px, pad_px], [pad_px, pad_px], [0, 0]], mode="REFLECT")
            image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed=crop_seed)
        elif fraction < 1.0:
            image = _central_crop_jpeg(encoded, fraction)
        else:
            image = tf.io.decode_jpeg(encoded, channels=3)
        if flipping:  # on the uint8 crop, before resizing: fewer bytes to move
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        if training and augment == "pad_crop":  # already S x S
            image = tf.cast(image, tf.float32)
        else:
            image = _resize(image, image_size)
        return _normalize(image, normalize), tf.cast(features["image/class/label"] - offset, tf.int32)

    dataset = dataset.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    dataset = dataset.prefetch(AUTOTUNE)
    return dataset.with_options(_options(deterministic))


# Measured on the 2-core VM with benchmarks/input_pipeline.py (img per CPU-second, pipeline vs the bare
# fused crop-decode in the same run; noise about +-3 %) and kept out because none beat the code above:
# - decode_and_crop_jpeg(dct_method="INTEGER_FAST") or fancy_upscaling=False: no faster decode (1,331 and
#   1,302 vs 1,361 img/CPU-s; libjpeg-turbo's SIMD ISLOW is as fast), and they change pixels;
# - resize: uint8 input 11 % slower than casting first, crop_and_resize 35 % slower, an affine
#   ImageProjectiveTransformV3 doing resize + flip in one op 60 % slower;
# - flip: after the resize on floats, by gather, by a cond on the seed bits (11 ops instead of the 45 of
#   stateless_random_flip_left_right) or ReverseV2 with a 0/1-long axis list: equal or slower;
# - normalise: on the whole batch after `batch` 9 % slower (memory-bound); FusedBatchNorm or bias_add
#   instead of one multiply and one subtract 15-30 % slower;
# - parse per record instead of 64 at a time: 6 % slower; seeds made per batch of 64 instead of a zip per
#   element, interleave cycle 4 instead of 16 or block 8 instead of 1, num_parallel_calls=2 instead of
#   AUTOTUNE, private_threadpool_size=2, parallel_batch, map_fusion, inject_prefetch off,
#   experimental_slack: no gain.
# What remains between the pipeline and its limit is work the contract asks for: resize to S x S
# (~17 %), flip and normalise (~8 %); reading, parsing, shuffling and batching cost ~5 %.
def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # One thread per op inside tf.data: parallelism comes from the parallel map, not from each op.
    options.threading.max_intra_op_parallelism = 1
    # We shard files ourselves; stop tf.distribute from sharding a second time.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def sample_batch_with_boxes(data_dir: str | Path, name: str, n: int, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The first `n` images, whole, resized to uint8 [n,S,S,3], and their boxes [n,K,4] for drawing.

    Boxes are (ymin, xmin, ymax, xmax) relative to the image, padded to K by repeating an image's
    last box (an image without boxes gets the whole image), as `tf.image.draw_bounding_boxes` takes.
    """
    files = [shard["path"] for shard in read_manifest(data_dir, name)["shards"]]
    images, boxes = [], []
    for serialized in tf.data.TFRecordDataset(files).take(n):
        features = _parse(serialized)
        image = tf.io.decode_jpeg(features["image/encoded"], channels=3)
        images.append(tf.cast(tf.clip_by_value(tf.round(_resize(image, image_size)), 0, 255), tf.uint8))
        image_boxes = _boxes(features)
        boxes.append(image_boxes if image_boxes.shape[0] else tf.constant([[0.0, 0.0, 1.0, 1.0]]))
    if not images:
        return tf.zeros([0, image_size, image_size, 3], tf.uint8), tf.zeros([0, 1, 4])
    most = max(b.shape[0] for b in boxes)
    padded = [tf.concat([b, tf.repeat(b[-1:], most - b.shape[0], axis=0)], axis=0) for b in boxes]
    return tf.stack(images), tf.stack(padded)
