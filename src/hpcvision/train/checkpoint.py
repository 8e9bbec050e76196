"""The checkpoint directory: run.yaml, labels.json, and `ckpt-<step>` files of tf.train.CheckpointManager.

Atomicity: TensorFlow writes each checkpoint's `.data-*` and `.index` under temporary names and
renames them into place (BundleWriter / MergeV2Checkpoints), and only then rewrites the `checkpoint`
state file, itself through an atomic write. A reader that follows the state file therefore never
sees a half-written checkpoint; one damaged afterwards (disk, copy) is skipped with a warning. What a
save killed midway leaves (`ckpt-N_temp/`, `*.tempstate*`, a state file that lists too few checkpoints
or none) is tidied by the chief before it saves again (`tidy_checkpoint_dir`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from hpcvision.config import load_config, save_config
from hpcvision.errors import UserError
from hpcvision.files import atomic_path, write_atomic

log = logging.getLogger(__name__)

RUN_FILE = "run.yaml"
LABELS_FILE = "labels.json"
CHECKPOINT_NAME = "ckpt"
STATE_FILE = "checkpoint"  # CheckpointManager's list of the checkpoints it keeps
# What TensorFlow leaves when a save of ours is killed: the shards' folder `<prefix>_temp/`, a merged
# index or data file under `.tempstate<n>`, a data file whose index never came, the state file's
# `checkpoint.tmp<uuid>` (functional_saver.py, tensor_bundle.cc MergeBundles, file_io.py; TF 2.21).
_UNFINISHED = re.compile(rf"{CHECKPOINT_NAME}-\d+(_temp|\.(index|data-\d+-of-\d+)\.tempstate\d+)"
                         rf"|{STATE_FILE}\.tmp[0-9a-f]{{32}}")
_DATA = re.compile(rf"({CHECKPOINT_NAME}-\d+)\.data-\d+-of-\d+")


def labels_from_manifest(manifest: dict) -> dict:
    """labels.json content: the manifest's label offset and 0-based classes with wnid and text."""
    offset = int(manifest.get("label_offset", 1))
    classes = [
        {"index": int(item["label"]) - offset, "wnid": item.get("wnid", ""), "text": item.get("text", "")}
        for item in manifest.get("labels", [])
    ]
    return {"label_offset": offset, "classes": sorted(classes, key=lambda c: c["index"])}


def synthetic_labels(num_classes: int) -> dict:
    """labels.json content for a run on synthetic inputs (class_<i> names)."""
    classes = [{"index": i, "wnid": f"class_{i}", "text": f"class {i}"} for i in range(num_classes)]
    return {"label_offset": 0, "classes": classes}


def write_run_files(config, labels: dict, checkpoint_dir: str | Path) -> None:
    """Record the run's settings and class names next to its checkpoints (chief only; once the
    checkpoint, if any, is known to hold this model)."""
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / RUN_FILE) as tmp:
        save_config(recorded(config), tmp)
    write_atomic(directory / LABELS_FILE, json.dumps(labels, indent=1) + "\n")


def tidy_checkpoint_dir(checkpoint_dir: str | Path) -> None:
    """Before the chief saves into `checkpoint_dir`: remove what killed saves left there, and list every
    checkpoint in the state file, which CheckpointManager prunes from (a checkpoint it does not list stays)."""
    directory = Path(checkpoint_dir)
    removed = _remove_unfinished_saves(directory)
    if removed:
        log.info("removed what interrupted saves left in %s: %s", directory, ", ".join(removed))
    _list_every_checkpoint(directory)


def _remove_unfinished_saves(directory: Path) -> list[str]:
    """Delete our leftovers of killed saves (names as TensorFlow makes them, nothing else); their names."""
    if not directory.is_dir():
        return []
    indexed = {Path(prefix).name for prefix in checkpoint_prefixes(directory)}
    removed = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        data = _DATA.fullmatch(entry.name)
        if _UNFINISHED.fullmatch(entry.name) or (data and data.group(1) not in indexed):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
    return removed


def _list_every_checkpoint(directory: Path) -> None:
    """Rewrite the state file when a checkpoint on disk is missing from it (or it is missing), oldest first."""
    import tensorflow as tf
    from google.protobuf import text_format

    names = [Path(prefix).name for prefix in reversed(checkpoint_prefixes(directory))]
    state = tf.train.get_checkpoint_state(str(directory)) if names else None
    listed = {Path(path).name for path in state.all_model_checkpoint_paths} if state else set()
    if not set(names) - listed:
        return
    times = [(directory / f"{name}.index").stat().st_mtime for name in names]
    # Timestamps after `last_preserved_timestamp` are what the manager may delete.
    proto = tf.compat.v1.train.generate_checkpoint_state_proto(
        os.path.abspath(directory), names[-1], all_model_checkpoint_paths=list(names),
        all_model_checkpoint_timestamps=times, last_preserved_timestamp=min(times) - 1)
    write_atomic(directory / STATE_FILE, text_format.MessageToString(proto))
    log.info("%s: the checkpoint list now names all %d checkpoints, so the oldest are pruned again",
             directory / STATE_FILE, len(names))


def checkpoint_prefixes(checkpoint_dir: str | Path) -> list[str]:
    """Checkpoint prefixes in `checkpoint_dir`, newest (highest step) first."""
    found = {}
    for index in Path(checkpoint_dir).glob(f"{CHECKPOINT_NAME}-*.index"):
        match = re.fullmatch(rf"{CHECKPOINT_NAME}-(\d+)\.index", index.name)
        if match:
            found[int(match.group(1))] = str(index.with_suffix(""))
    return [found[n] for n in sorted(found, reverse=True)]


def restore_newest(checkpoint, checkpoint_dir: str | Path, *, model: str, hint: str = "",
                   partial: bool = False) -> str | None:
    """Restore the newest checkpoint that reads cleanly; its prefix, or None if there is none.

    Every object of `checkpoint` must be bound (with `partial` the checkpoint may hold more, such as the
    optimizer inference does not build); one of another model is a UserError that names `model` (what
    this run expects) and ends with `hint`. A damaged one is named in a warning and the previous one is
    tried; if all are damaged, UserError.
    """
    prefixes = checkpoint_prefixes(checkpoint_dir)
    for prefix in prefixes:
        status = None
        try:
            status = checkpoint.restore(prefix)
            status.assert_existing_objects_matched()
            if partial:
                status.expect_partial()
            return prefix
        except (AssertionError, ValueError) as exc:  # unbound objects, or a variable of another shape
            _quiet_unrestored(checkpoint, status)
            raise UserError(f"{checkpoint_dir}: {Path(prefix).name} holds another model than {model} "
                            f"({_mismatch(exc)})" + (f"; {hint}" if hint else "")) from None
        except Exception as exc:  # noqa: BLE001 - TF raises many types for damaged files; all mean "skip"
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", _files_of(prefix), detail)
    if prefixes:
        raise UserError(f"{checkpoint_dir}: no usable checkpoint ({len(prefixes)} found, all unreadable)")
    return None


def _quiet_unrestored(checkpoint, status) -> None:
    """Keep TensorFlow from listing every value a refused checkpoint left unrestored (dozens of warnings
    after our one line). A ValueError leaves no status: its pending restores hang on the root object
    (TF 2.21 internals, skipped where absent) and lead to the same switch."""
    if status is not None:
        status.expect_partial()
        return
    for positions in getattr(checkpoint, "_deferred_dependencies", {}).values():
        for position in positions:
            coordinator = getattr(position, "checkpoint", None)
            if coordinator is not None and hasattr(coordinator, "expect_partial"):
                coordinator.expect_partial = True


def _mismatch(exc: Exception) -> str:
    """TensorFlow's restore error in a few words: which variable differs, or how many objects are unbound."""
    text = str(exc)
    shape = re.search(r"incompatible tensor with shape (\(.*?\)) when attempting to restore variable with "
                      r"shape (\(.*?\)) and name (\S+?)(:\d+)?\.", text)
    if shape:
        return f"{shape.group(3)} has shape {shape.group(1)} in the checkpoint, {shape.group(2)} in the model"
    unbound = re.search(r"Found (\d+) Python objects that were not bound", text)
    if unbound:
        return f"{unbound.group(1)} of the model's objects are not in the checkpoint"
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


def _files_of(prefix: str) -> str:
    data = sorted(Path(prefix).parent.glob(Path(prefix).name + ".data-*"))
    return ", ".join([prefix + ".index"] + [str(p) for p in data])


def load_run_config(checkpoint_dir: str | Path):
    """The TrainConfig recorded in `checkpoint_dir/run.yaml`."""
    from hpcvision.train.config import TrainConfig

    path = Path(checkpoint_dir) / RUN_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing (not a training checkpoint directory?)")
    return load_config(TrainConfig, None, path)


# What a checkpoint of the folder is made of, as the message names it: another value cannot resume it.
GUARDED = {"model": "--model {}".format, "num_classes": "{} classes".format, "optimizer": "--optimizer {}".format,
           "freeze_backbone": lambda frozen: "--freeze-backbone" if frozen else "no --freeze-backbone"}


def check_resume(config, global_batch: int, steps_per_epoch: int, examples_per_epoch: int) -> int:
    """Before a resume builds anything: the folder's run.yaml must record this run's model, class count,
    optimizer, frozen backbone and global batch (another batch only with `allow_batch_change`); the step
    shift to use (UserError naming both values otherwise).

    The shift places the step counter in epochs of the new batch: epoch = (step + shift) / steps_per_epoch.
    """
    recorded = check_same_run(config)
    if recorded is None:
        return 0
    directory = Path(config.checkpoint_dir)
    old = recorded.global_batch
    if old is None or old == global_batch:
        return recorded.step_shift
    if not config.allow_batch_change:
        raise UserError(f"{directory / RUN_FILE}: the run's steps so far are of global batch {old}, this command's "
                        f"is {global_batch}; --allow-batch-change continues at the epoch reached with the new batch, "
                        "or resume with the same --batch-size and replicas")
    step = newest_step(directory)
    epoch = (step + recorded.step_shift) / max(1, examples_per_epoch // old)
    shift = round(epoch * steps_per_epoch) - step
    log.warning("global batch %d -> %d at step %d: the run is at epoch %.2f and continues there, %d steps per epoch "
                "from now on; the schedule keeps its place in epochs (warm-up, decay, step boundaries), its rate scaled "
                "to the new batch; steps keep counting from %d", old, global_batch, step, epoch, steps_per_epoch, step)
    return shift


def check_same_run(config):
    """UserError when `config.checkpoint_dir` holds checkpoints of a run whose run.yaml records another model,
    class count, optimizer or --freeze-backbone than `config` (a value `config` leaves unset, such as the
    class count before the manifest is read, is not compared); that run's TrainConfig, or None without one.

    Needs no TensorFlow: `train` calls it before importing it, and again once the class count is known."""
    directory = Path(config.checkpoint_dir or "")
    if not config.checkpoint_dir or not (directory / RUN_FILE).is_file() or not checkpoint_prefixes(directory):
        return None
    recorded = load_run_config(directory)
    hint = (f"to resume it, `hpcvision train --checkpoint-dir {directory}` alone uses its settings; "
            "for a new run, another --checkpoint-dir")
    for name, text in GUARDED.items():
        theirs, ours = getattr(recorded, name), getattr(config, name)
        if theirs is not None and ours is not None and theirs != ours:
            raise UserError(f"{directory / RUN_FILE}: the run there has {text(theirs)}, this command "
                            f"{text(ours)}; {hint}")
    return recorded


def newest_step(checkpoint_dir: str | Path) -> int:
    """The step counter of the newest checkpoint whose index reads (read from the file, no model built)."""
    import tensorflow as tf

    for prefix in checkpoint_prefixes(checkpoint_dir):
        try:
            return int(tf.train.load_checkpoint(prefix).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
        except (tf.errors.OpError, ValueError):
            continue
    raise UserError(f"{checkpoint_dir}: no usable checkpoint (all unreadable)")


def recorded(config):
    """`config` as run.yaml keeps it: file and folder options absolute, so it means the same from any
    directory, and without this job's --deadline (`train --checkpoint-dir DIR` alone, in a later job,
    would otherwise stop at once at a deadline long past) or its --data-service (a later job runs its own)."""
    import dataclasses

    paths = {name: os.path.abspath(getattr(config, name)) for name in ("data", "val_data", "checkpoint_dir",
                                                                        "init_checkpoint")
             if getattr(config, name, None)}
    return dataclasses.replace(config, deadline=None, data_service=None, **paths)


def load_labels(checkpoint_dir: str | Path) -> dict:
    """The labels.json of a run: {"label_offset": k, "classes": [{"index", "wnid", "text"}]}."""
    path = Path(checkpoint_dir) / LABELS_FILE
    try:
        labels = json.loads(path.read_text())
        labels["classes"]  # noqa: B018 - validate the key exists
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot read labels ({exc})") from None
    return labels


def _load_moving_averages(model, prefix: str) -> None:
    """Replace the model's weights by the moving averages the run kept (`--ema-decay`); weights without one
    (frozen by --freeze-backbone) keep their values."""
    import tensorflow as tf

    from hpcvision.train.optim import ema_key

    reader = tf.train.load_checkpoint(prefix)
    found = 0
    for variable in model.trainable_variables:
        key = f"ema/{ema_key(variable)}/.ATTRIBUTES/VARIABLE_VALUE"
        if reader.has_tensor(key):
            variable.assign(reader.get_tensor(key))
            found += 1
    if not found:
        raise UserError(f"{prefix}: run.yaml says --ema-decay, but the checkpoint holds no moving averages")


def load_trained_model(checkpoint_dir: str | Path):
    """(keras.Model returning logits, TrainConfig, labels) from the newest usable checkpoint."""
    import keras

    trained, config, labels = restore_run_model(checkpoint_dir)
    if isinstance(trained.outputs, list) and len(trained.outputs) > 1:
        return keras.Model(trained.inputs, trained.outputs[0], name=trained.name), config, labels
    return trained, config, labels


def restore_run_model(checkpoint_dir: str | Path, prefix: str | Path | None = None):
    """(model, TrainConfig, labels) of a run: the model (aux heads included) as its run.yaml describes it,
    with the weights of its newest usable checkpoint, or of `prefix` when given."""
    import tensorflow as tf

    from hpcvision.models import build_model, model_spec

    config = load_run_config(checkpoint_dir)
    labels = load_labels(checkpoint_dir)
    if not checkpoint_prefixes(checkpoint_dir):
        raise UserError(f"{checkpoint_dir}: no checkpoint (ckpt-*.index) found")
    # Build exactly as trained (aux heads included) so the checkpoint's object graph matches.
    aux = model_spec(config.model).has_aux
    # At the evaluation resolution (--eval-image-size): the weights' shapes do not depend on it.
    trained = build_model(config.model, len(labels["classes"]), config.input.eval_size(config.image_size), aux=aux)
    expected = f"run.yaml's {config.model} with {len(labels['classes'])} classes"
    checkpoint = tf.train.Checkpoint(model=trained)
    if prefix is None:
        prefix = restore_newest(checkpoint, checkpoint_dir, model=expected, partial=True)
    else:
        try:
            checkpoint.restore(str(prefix)).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError) as exc:
            raise UserError(f"{prefix}: holds another model than {expected} ({_mismatch(exc)})") from None
        except tf.errors.OpError as exc:
            raise UserError(f"{prefix}: unreadable ({str(exc).strip().splitlines()[0]})") from None
    if config.ema_decay:  # the weights evaluation and export use
        _load_moving_averages(trained, str(prefix))
    return trained, config, labels
