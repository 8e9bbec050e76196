"""tf.data input from the TFRecord shards `hpcvision data build` writes.

`make_dataset` is what training, evaluation and the benchmarks read: files -> this worker's share ->
shuffle -> parse -> preprocess (`hpcvision.data.presets`, options in an `InputConfig`) -> batch.
Random choices use stateless ops seeded per element, so a given `seed` gives the same batches on every
run even with parallel map calls. `synthetic_dataset` stands in for it in benchmarks (`--synthetic`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from hpcvision.data import presets
from hpcvision.data.batch_augment import batch_augmenter
from hpcvision.data.input_config import InputConfig
from hpcvision.data.shards import has_manifest, manifest_path, read_manifest
from hpcvision.errors import UserError

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
PARSE_BATCH = 64  # records parsed per op, then decoded one by one

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


def parse_records(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A vector of records at once (about twice as fast per record); box lists as ragged rows."""
    features = tf.io.parse_example(serialized, _spec())
    return {
        key: tf.RaggedTensor.from_sparse(v) if isinstance(v, tf.SparseTensor) else v for key, v in features.items()
    }


def record_boxes(features: dict[str, tf.Tensor]) -> tf.Tensor:
    """One record's stored boxes as [N, 4] (ymin, xmin, ymax, xmax), the order tf.image box ops take."""
    return tf.stack([features[key] for key in _BOX_KEYS], axis=-1)


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


@dataclass(frozen=True)
class _Share:
    """The shard files one input pipeline reads, and how many records it gets from them per epoch."""

    files: list[str]
    records: int
    record_shards: int = 1  # >1: too few files, so every pipeline reads all and keeps every n-th record
    index: int = 0  # this pipeline's place among record_shards


def _share(manifest: dict[str, Any], source: Path, input_context: tf.distribute.InputContext | None) -> _Share:
    files = [shard["path"] for shard in manifest["shards"]]
    counts = {shard["path"]: int(shard.get("count", 0)) for shard in manifest["shards"]}
    if not files:
        raise UserError(f"{source}: lists no shards")
    if input_context is None or input_context.num_input_pipelines == 1:
        return _Share(files, sum(counts.values()))
    n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(files) >= n:
        return _Share(files[i::n], sum(counts[f] for f in files[i::n]))
    log.warning(
        "%d shard files for %d input pipelines: every worker reads all files and keeps every %d-th "
        "record (slower; write at least as many shards as workers)", len(files), n, n
    )
    return _Share(files, math.ceil(sum(counts[f] for f in files) / n), record_shards=n, index=i)


def _read(share: _Share, *, training: bool, seed: int | None, deterministic: bool) -> tf.data.Dataset:
    """The records of this pipeline's share: files shuffled (training), interleaved, sharded by record if needed."""
    sharded = share.record_shards > 1
    dataset = tf.data.Dataset.from_tensor_slices(share.files)
    if training and not sharded:
        dataset = dataset.shuffle(len(share.files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
        cycle_length=min(len(share.files), 16),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic or sharded,
    )
    return dataset.shard(share.record_shards, share.index) if sharded else dataset


def _preprocess(dataset: tf.data.Dataset, config: InputConfig, image_size: int, label_offset: int, *,
                training: bool, element_seed: int | None, deterministic: bool) -> tf.data.Dataset:
    """Serialised records -> (image, 0-based label) through the training or evaluation preset.

    A record whose image does not decode (garbage JPEG data, a header claiming more pixels than the
    decoder takes) is dropped and TensorFlow logs why; `make_dataset`'s callers count what is missing.
    """

    def label(features):
        return tf.cast(features["image/class/label"] - label_offset, tf.int32)

    def train(features, seeds):
        boxes = record_boxes(features) if config.augment == "inception" else None
        return presets.train_image(features["image/encoded"], boxes, seeds, image_size, config), label(features)

    def evaluate(features):
        return presets.eval_image(features["image/encoded"], image_size, config), label(features)

    if training:
        # Two independent stateless seed pairs per element (crop, flip); a new sequence each epoch.
        seeds = tf.data.Dataset.random(seed=element_seed, rerandomize_each_iteration=True).batch(4)
        dataset = tf.data.Dataset.zip((dataset, seeds))
    # Parse 64 records per op (about twice as fast per record as one at a time).
    dataset = dataset.batch(PARSE_BATCH).map(
        (lambda records, seeds: (parse_records(records), seeds)) if training else (lambda r: (parse_records(r),)),
        num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return _decode_skipping_errors(dataset, train if training else evaluate, deterministic)


def _decode_skipping_errors(parsed: tf.data.Dataset, fn, deterministic: bool) -> tf.data.Dataset:
    """Each parsed batch -> `fn` per image, in a dataset of its own whose `ignore_errors` drops the images
    `fn` fails on. Only those: a corrupt shard (DataLossError) comes from `parsed` and still stops the
    pipeline, which an `ignore_errors` after a plain map would silently end that shard at instead (and
    it would also stop the map fusing with `batch`, measured 35 % slower). Same order as a plain map.
    """

    def decode(*batch):
        return tf.data.Dataset.from_tensor_slices(batch).map(fn).ignore_errors(log_warning=True)

    return parsed.interleave(decode, block_length=PARSE_BATCH, num_parallel_calls=AUTOTUNE,
                             deterministic=deterministic)


def make_dataset(
    data_dir: str | Path,
    name: str,
    config: InputConfig | None = None,
    *,
    training: bool,
    batch_size: int,
    image_size: int,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    global_batch_size: int | None = None,
    label_offset: int | None = None,
    repeat: bool | None = None,
) -> tf.data.Dataset:
    """Batches of (images float32 [B,S,S,3] normalised, labels int32 [B] 0-based) from `DIR/<name>-*`;
    with MixUp/CutMix on, training labels are class distributions float32 [B, C].

    `config` (default: `InputConfig()`) says how images are cropped, flipped and normalised.
    `batch_size` is per replica (what one `strategy.run` call sees); pass `global_batch_size` with an
    `input_context` to have it split by `input_context.get_per_replica_batch_size` instead.
    Training repeats forever (unless `repeat=False`) and drops the last partial batch; evaluation
    reads every record once. `label_offset` overrides the manifest's (stored label - offset = class).
    """
    config = config or InputConfig()
    if input_context is not None and global_batch_size is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
    manifest = read_manifest(data_dir, name)
    share = _share(manifest, manifest_path(data_dir, name), input_context)
    deterministic = (seed is not None) or not training
    dataset = _read(share, training=training, seed=seed, deterministic=deterministic)
    if training:
        dataset = dataset.shuffle(max(1, min(share.records, config.shuffle_buffer)), seed=seed,
                                  reshuffle_each_iteration=True)
    if training if repeat is None else repeat:
        dataset = dataset.repeat()
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    element_seed = None if seed is None else seed + 1000 * pipeline_id
    dataset = _preprocess(
        dataset, config, image_size, manifest["label_offset"] if label_offset is None else label_offset,
        training=training, element_seed=element_seed, deterministic=deterministic,
    )
    dataset = dataset.batch(batch_size, drop_remainder=training)
    # Training only (evaluation images come normalised): no Keras layers are built for an eval dataset.
    augment = batch_augmenter(config, int(manifest["num_classes"]), element_seed) if training else None
    if augment is not None:
        dataset = dataset.map(augment, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return dataset.prefetch(AUTOTUNE).with_options(_options(deterministic))


# Measured on the 2-core VM with benchmarks/input_pipeline.py (img per CPU-second, pipeline vs the bare
# fused crop-decode in the same run; noise about +-3 %) and kept out because none beat the code above
# and the per-image ops of hpcvision.data.presets:
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


def report_skipped(data_dir: str | Path, name: str, read: int) -> int:
    """How many records of a split read once were dropped as undecodable (listed - read); one warning line."""
    path = manifest_path(data_dir, name)
    listed = int(read_manifest(data_dir, name)["num_examples"])
    if read > listed:
        log.warning("%s lists %d examples but %d were read", path, listed, read)
    skipped = max(listed - read, 0)
    if skipped:
        log.warning("%s: %d of %d records skipped, their images do not decode; list them with: "
                    "hpcvision data verify %s --name %s --decode", path, skipped, listed, data_dir, name)
    return skipped


@contextmanager
def naming_corrupt_shards(*splits: tuple[str | Path | None, str]) -> Iterator[None]:
    """Turn a DataLossError from reading these (folder, name) splits' shards into a UserError naming the shard."""
    try:
        yield
    except tf.errors.DataLossError as exc:
        known = [(Path(folder), name) for folder, name in splits if folder is not None]
        if not known:
            raise
        raise corrupt_shard_error(known, exc) from None


def corrupt_shard_error(splits: list[tuple[Path, str]], exc: Exception) -> UserError:
    """One line for TFRecordDataset's "corrupted record at OFFSET" (which names no file): the shard and record."""
    found = re.search(r"corrupted record at (\d+)", str(getattr(exc, "message", exc)))
    offset = int(found.group(1)) if found else 0
    for folder, name in ((f, n) for f, n in splits if has_manifest(f, n)):
        for path in (Path(shard["path"]) for shard in read_manifest(folder, name)["shards"]):
            problem = _record_problem_at(path, offset) if _size(path) > offset else None
            if problem:
                return UserError(f"{path}: {problem}; check the split with: hpcvision data verify {folder} "
                                 f"--name {name}")
    what = f"a corrupted record at byte {offset}" if found else "a corrupted record"
    folder, name = splits[0]
    where = " / ".join(f"{f}/{n}" for f, n in splits)
    return UserError(f"{what} in a shard of {where}; find it with: hpcvision data verify {folder} --name {name}")


def _size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _record_problem_at(path: Path, offset: int) -> str | None:
    """What verify's reader finds wrong with the record TensorFlow reported at byte `offset`, or None.

    TensorFlow gives a record's start for a bad length, the start of its data (12 bytes on) for bad
    data. The reader starts at the beginning of the file, so the records before are read too, only on
    this error path.
    """
    from hpcvision.data.records import CorruptRecord, read_records

    position = 0
    try:
        for data in read_records(path):
            position += 16 + len(data)  # 8-byte length, two 4-byte CRCs
            if position > offset:
                return None
    except CorruptRecord as exc:
        return f"record {exc.index}: {exc.reason}" if offset in (position, position + 12) else None
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return None


def sample_batch_with_boxes(data_dir: str | Path, name: str, n: int,
                            image_size: int) -> tuple[tf.Tensor, tf.Tensor, list[int]]:
    """The first `n` images, whole, resized to uint8 [n,S,S,3], their boxes [n,K,4] for drawing and their
    labels as stored (the manifest's label_offset not taken off).

    Boxes are (ymin, xmin, ymax, xmax) relative to the image, padded to K by repeating an image's
    last box (an image without boxes gets the whole image), as `tf.image.draw_bounding_boxes` takes.
    """
    files = [shard["path"] for shard in read_manifest(data_dir, name)["shards"]]
    images, boxes, labels = [], [], []
    for serialized in tf.data.TFRecordDataset(files):
        if len(images) == n:
            break
        features = _parse(serialized)
        try:
            image = tf.io.decode_jpeg(features["image/encoded"], channels=3)
        except tf.errors.InvalidArgumentError:  # an image that does not decode: training skips it too
            continue
        images.append(tf.cast(tf.clip_by_value(tf.round(presets.resize(image, image_size)), 0, 255), tf.uint8))
        labels.append(int(features["image/class/label"]))
        image_boxes = record_boxes(features)
        boxes.append(image_boxes if image_boxes.shape[0] else tf.constant([[0.0, 0.0, 1.0, 1.0]]))
    if not images:
        return tf.zeros([0, image_size, image_size, 3], tf.uint8), tf.zeros([0, 1, 4]), []
    most = max(b.shape[0] for b in boxes)
    padded = [tf.concat([b, tf.repeat(b[-1:], most - b.shape[0], axis=0)], axis=0) for b in boxes]
    return tf.stack(images), tf.stack(padded), labels
