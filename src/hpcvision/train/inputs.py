"""What the training loop reads: the shards through `hpcvision.data.pipeline`, or a synthetic batch.

`--synthetic` feeds one fixed random batch per replica, repeated: no input cost, so a benchmark
measures the train step alone, and a model can still fit it (the loss falls), which tests rely on.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from hpcvision.errors import UserError
from hpcvision.train.checkpoint import labels_from_manifest, synthetic_labels

log = logging.getLogger("hpcvision.train")

SYNTHETIC_EXAMPLES = 12_800  # one synthetic "epoch" unless --examples-per-epoch says otherwise


@dataclass(frozen=True)
class DataInfo:
    num_classes: int
    examples_per_epoch: int
    labels: dict
    has_validation: bool


def check_before_tensorflow(cfg) -> None:
    """What `train` can refuse in a second, before TensorFlow starts: a missing --checkpoint-dir or --data,
    a training split (or a --val-data split) without a usable manifest or without examples."""
    if not cfg.checkpoint_dir:
        raise UserError("--checkpoint-dir is required")
    if cfg.synthetic:
        if not cfg.num_classes:
            raise UserError("--synthetic needs --num-classes")
        return
    if not cfg.data:
        raise UserError("--data DIR is required (or --synthetic --num-classes N)")
    _read_split(cfg.data, cfg.train_name)
    if cfg.val_data and cfg.eval:
        _read_split(cfg.val_data, cfg.val_name)


def describe_data(cfg) -> DataInfo:
    """Classes, epoch size, labels.json content and whether validation shards exist (checked against the
    training split's label map, as `evaluate` checks a split against the model's)."""
    if cfg.synthetic:
        if not cfg.num_classes:
            raise UserError("--synthetic needs --num-classes")
        examples = cfg.examples_per_epoch or SYNTHETIC_EXAMPLES
        return DataInfo(cfg.num_classes, examples, synthetic_labels(cfg.num_classes), False)
    if not cfg.data:
        raise UserError("--data DIR is required (or --synthetic --num-classes N)")
    manifest = _read_split(cfg.data, cfg.train_name)
    num_classes = int(manifest["num_classes"])
    if cfg.num_classes and cfg.num_classes != num_classes:
        raise UserError(f"{cfg.data}: manifest has {num_classes} classes, --num-classes says {cfg.num_classes}")
    examples = cfg.examples_per_epoch or int(manifest["num_examples"])
    labels = labels_from_manifest(manifest)
    return DataInfo(num_classes, examples, labels, _check_validation(cfg, labels["classes"]))


def val_dir(cfg) -> str | None:
    """Where the validation split is: --val-data, else --data."""
    return cfg.val_data or cfg.data


def _read_split(folder: str, name: str) -> dict:
    """A split's manifest; UserError when it holds no examples (a silent empty epoch otherwise)."""
    from hpcvision.data.shards import manifest_path, read_manifest

    manifest = read_manifest(folder, name)
    if int(manifest["num_examples"]) <= 0:
        raise UserError(f"{manifest_path(folder, name)}: the '{name}' split has 0 examples; rebuild it "
                        "(see its skipped report) or point --data/--val-data elsewhere")
    return manifest


def _check_validation(cfg, classes: list[dict]) -> bool:
    """True when the loop evaluates: a validation split exists (required with --val-data) and `cfg.eval`;
    a split with 0 examples or another label map is refused before training."""
    from hpcvision.data.shards import has_manifest, manifest_path

    if not cfg.eval or not (cfg.val_data or has_manifest(cfg.data, cfg.val_name)):
        return False
    from hpcvision.infer.evaluate import check_label_map

    manifest = _read_split(val_dir(cfg), cfg.val_name)
    check_label_map(classes, manifest, str(manifest_path(val_dir(cfg), cfg.val_name)),
                    str(manifest_path(cfg.data, cfg.train_name)))
    return True


def train_dataset_fn(cfg, image_size: int, num_classes: int, *, steps_per_epoch: int, first_step: int,
                     last_step: int, seeded: bool = True, service_attempt: int = 0):
    """A `dataset_fn(input_context)` yielding per-replica (images, labels) steps from global step
    `first_step` up to `last_step`, epoch after epoch (with `--accumulate N`: N micro-batches a step).

    Epoch e reads its own shuffle order (seed + e) and gives `steps_per_epoch` steps, so a run resumed
    at any step sees the batches an uninterrupted one would. One iterator serves the whole run: a new
    iterator per epoch cost 0.5-2.5 s to tear down the old one, once 52 s on a worker of a 2-worker run.
    With --data-service the batches come from the input service instead, one job per epoch: the epoch of
    `first_step` only (`service_dataset_fn`).
    """
    if cfg.data_service:
        return service_dataset_fn(cfg, image_size, epoch=first_step // steps_per_epoch, attempt=service_attempt)

    def dataset_fn(input_context=None):
        from hpcvision.data.pipeline import synthetic_dataset

        if cfg.synthetic:
            pipeline_id = input_context.input_pipeline_id if input_context else 0
            dataset = synthetic_dataset(cfg.batch_size, image_size, num_classes, seed=cfg.seed,
                                        pipeline_id=pipeline_id)
            return dataset.batch(cfg.accumulate, drop_remainder=True) if cfg.accumulate > 1 else dataset

        # Epoch after epoch, each with Python-int seeds (what Keras' seeded batch-augmentation layers take).
        first_epoch, skip = divmod(first_step, steps_per_epoch)
        # A step takes one batch per local replica from this pipeline (2 devices per worker: 2 batches a step).
        local = max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines) if input_context else 1
        epochs = []
        for epoch in range(first_epoch, max(first_epoch + 1, -(-last_step // steps_per_epoch))):
            seed = cfg.seed + epoch if (seeded and cfg.seed is not None) else None
            skipped = skip if epoch == first_epoch else 0
            epochs.append(_epoch_dataset(cfg, image_size, seed, input_context).skip(skipped * local).take(
                (steps_per_epoch - skipped) * local))
        return functools.reduce(lambda first, then: first.concatenate(then), epochs)

    return dataset_fn


def service_dataset_fn(cfg, image_size: int, *, epoch: int, attempt: int):
    """The dataset_fn of --data-service: `make_dataset` for one whole pass (not split by input_context: the
    service shares it out among the trainers), run by the service's workers as the job of this epoch.

    A resumed epoch takes its remaining steps from a fresh pass: the service's first-come order cannot be
    replayed, so there are no "batches already trained on" to skip.
    """
    from hpcvision.data import service

    service.wait_for_dispatcher(cfg.data_service)
    name = service.job_name(attempt, epoch)
    log.info("epoch %d: training batches from the input service at %s, job %s", epoch, cfg.data_service, name)

    def dataset_fn(input_context=None):
        from hpcvision.data.pipeline import make_dataset

        # Every trainer builds the same graph (same seed): the dispatcher runs one dataset per job name.
        seed = cfg.seed + epoch if cfg.seed is not None else None
        dataset = make_dataset(cfg.data, cfg.train_name, cfg.input, training=True, batch_size=cfg.batch_size,
                               image_size=image_size, seed=seed, repeat=False)
        if cfg.accumulate > 1:  # stacked by the service too: one update's micro-batches per element
            dataset = dataset.batch(cfg.accumulate, drop_remainder=True)
        return service.from_service(dataset, cfg.data_service, name)

    return dataset_fn


def _epoch_dataset(cfg, image_size: int, seed, input_context):
    """The repeated, shuffled training steps of one epoch's order; with
    `--accumulate N`, each step is N micro-batches [N, B, ...], one update's share of this replica."""
    from hpcvision.data.pipeline import make_dataset

    dataset = make_dataset(cfg.data, cfg.train_name, cfg.input, training=True, batch_size=cfg.batch_size,
                           image_size=image_size, seed=seed, input_context=input_context, repeat=True)
    return dataset.batch(cfg.accumulate, drop_remainder=True) if cfg.accumulate > 1 else dataset


def eval_dataset(cfg, image_size: int, *, num_workers: int, worker_index: int):
    """This worker's share of the validation files, central crop, each example once."""
    import tensorflow as tf

    from hpcvision.data.pipeline import make_dataset

    context = tf.distribute.InputContext(num_input_pipelines=num_workers, input_pipeline_id=worker_index,
                                         num_replicas_in_sync=num_workers)
    return make_dataset(val_dir(cfg), cfg.val_name, cfg.input, training=False, batch_size=cfg.batch_size,
                        image_size=image_size, input_context=context if num_workers > 1 else None, repeat=False)


def sample_inputs(cfg, image_size: int, labels: dict):
    """(uint8 images, boxes, class names) of a few training examples for TensorBoard, or None for synthetic
    input; names from `labels` (labels.json's content): a class's first words, else its wnid."""
    if cfg.synthetic:
        return None
    from hpcvision.data.pipeline import sample_batch_with_boxes

    images, boxes, stored = sample_batch_with_boxes(cfg.data, cfg.train_name, 8, image_size)
    names = {c["index"]: (c.get("text") or "").split(",")[0] or c.get("wnid", "") for c in labels["classes"]}
    offset = int(labels.get("label_offset", 0))
    return images, boxes, [names.get(label - offset, f"label {label}") for label in stored]
