"""What the training loop reads: the shards through `hpcvision.data.pipeline`, or a synthetic batch.

`--synthetic` feeds one fixed random batch per replica, repeated: no input cost, so a benchmark
measures the train step alone, and a model can still fit it (the loss falls), which tests rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcvision.errors import UserError
from hpcvision.train.checkpoint import labels_from_manifest, synthetic_labels

SYNTHETIC_EXAMPLES = 12_800  # one synthetic "epoch" unless --examples-per-epoch says otherwise


@dataclass(frozen=True)
class DataInfo:
    num_classes: int
    examples_per_epoch: int
    labels: dict
    has_validation: bool


def describe_data(cfg) -> DataInfo:
    """Classes, epoch size, labels.json content and whether validation shards exist."""
    if cfg.synthetic:
        if not cfg.num_classes:
            raise UserError("--synthetic needs --num-classes")
        examples = cfg.examples_per_epoch or SYNTHETIC_EXAMPLES
        return DataInfo(cfg.num_classes, examples, synthetic_labels(cfg.num_classes), False)
    if not cfg.data:
        raise UserError("--data DIR is required (or --synthetic --num-classes N)")
    from hpcvision.data.shards import has_manifest, read_manifest

    manifest = read_manifest(cfg.data, cfg.train_name)
    num_classes = int(manifest["num_classes"])
    if cfg.num_classes and cfg.num_classes != num_classes:
        raise UserError(f"{cfg.data}: manifest has {num_classes} classes, --num-classes says {cfg.num_classes}")
    examples = cfg.examples_per_epoch or int(manifest["num_examples"])
    has_validation = has_manifest(cfg.data, cfg.val_name)
    return DataInfo(num_classes, examples, labels_from_manifest(manifest), has_validation)


def train_dataset_fn(cfg, image_size: int, num_classes: int, *, epoch: int, skip: int, seeded: bool = True):
    """A `dataset_fn(input_context)` yielding per-replica (images, labels) batches, `skip` batches in."""

    def dataset_fn(input_context=None):
        from hpcvision.data.pipeline import make_dataset, synthetic_dataset

        if cfg.synthetic:
            pipeline_id = input_context.input_pipeline_id if input_context else 0
            return synthetic_dataset(cfg.batch_size, image_size, num_classes, seed=cfg.seed, pipeline_id=pipeline_id)

        seed = cfg.seed + epoch if (seeded and cfg.seed is not None) else None
        dataset = make_dataset(cfg.data, cfg.train_name, cfg.input, training=True, batch_size=cfg.batch_size,
                               image_size=image_size, seed=seed, input_context=input_context, repeat=True)
        return dataset.skip(skip) if skip else dataset

    return dataset_fn


def eval_dataset(cfg, image_size: int, *, num_workers: int, worker_index: int):
    """This worker's share of the validation files, central crop, each example once."""
    import tensorflow as tf

    from hpcvision.data.pipeline import make_dataset

    context = tf.distribute.InputContext(num_input_pipelines=num_workers, input_pipeline_id=worker_index,
                                         num_replicas_in_sync=num_workers)
    return make_dataset(cfg.data, cfg.val_name, cfg.input, training=False, batch_size=cfg.batch_size,
                        image_size=image_size, input_context=context if num_workers > 1 else None, repeat=False)


def sample_inputs(cfg, image_size: int):
    """(uint8 images, boxes) of a few training examples for TensorBoard, or None for synthetic input."""
    if cfg.synthetic:
        return None
    from hpcvision.data.pipeline import sample_batch_with_boxes

    return sample_batch_with_boxes(cfg.data, cfg.train_name, 8, image_size)
