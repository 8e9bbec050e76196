"""The checkpoint directory: run.yaml, labels.json, and `ckpt-<step>` files of tf.train.CheckpointManager.

Atomicity: TensorFlow writes each checkpoint's `.data-*` and `.index` under temporary names and
renames them into place (BundleWriter / MergeV2Checkpoints), and only then rewrites the `checkpoint`
state file, itself through an atomic write. A reader that follows the state file therefore never
sees a half-written checkpoint; one damaged afterwards (disk, copy) is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from hpcvision.config import load_config, save_config
from hpcvision.errors import UserError

log = logging.getLogger(__name__)

RUN_FILE = "run.yaml"
LABELS_FILE = "labels.json"
CHECKPOINT_NAME = "ckpt"


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
    """Record the run's settings and class names next to its checkpoints (chief only)."""
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(config, directory / RUN_FILE)
    (directory / LABELS_FILE).write_text(json.dumps(labels, indent=1) + "\n")


def checkpoint_prefixes(checkpoint_dir: str | Path) -> list[str]:
    """Checkpoint prefixes in `checkpoint_dir`, newest (highest step) first."""
    found = {}
    for index in Path(checkpoint_dir).glob(f"{CHECKPOINT_NAME}-*.index"):
        match = re.fullmatch(rf"{CHECKPOINT_NAME}-(\d+)\.index", index.name)
        if match:
            found[int(match.group(1))] = str(index.with_suffix(""))
    return [found[n] for n in sorted(found, reverse=True)]


def restore_newest(checkpoint, checkpoint_dir: str | Path, *, partial: bool = False) -> str | None:
    """Restore the newest checkpoint that reads cleanly; its prefix, or None if there is none.

    A damaged one is named in a warning and the previous one is tried; if all are damaged, UserError.
    """
    prefixes = checkpoint_prefixes(checkpoint_dir)
    for prefix in prefixes:
        try:
            status = checkpoint.restore(prefix)
            if partial:
                status.expect_partial()
            else:
                status.assert_existing_objects_matched()
            return prefix
        except Exception as exc:  # noqa: BLE001 - TF raises many types for damaged files; all mean "skip"
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", _files_of(prefix), detail)
    if prefixes:
        raise UserError(f"{checkpoint_dir}: no usable checkpoint ({len(prefixes)} found, all unreadable)")
    return None


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


def load_labels(checkpoint_dir: str | Path) -> dict:
    """The labels.json of a run: {"label_offset": k, "classes": [{"index", "wnid", "text"}]}."""
    path = Path(checkpoint_dir) / LABELS_FILE
    try:
        labels = json.loads(path.read_text())
        labels["classes"]  # noqa: B018 - validate the key exists
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot read labels ({exc})") from None
    return labels


def load_trained_model(checkpoint_dir: str | Path):
    """(keras.Model returning logits, TrainConfig, labels) from the newest usable checkpoint."""
    import keras
    import tensorflow as tf

    from hpcvision.models import build_model, model_spec

    config = load_run_config(checkpoint_dir)
    labels = load_labels(checkpoint_dir)
    if not checkpoint_prefixes(checkpoint_dir):
        raise UserError(f"{checkpoint_dir}: no checkpoint (ckpt-*.index) found")
    # Build exactly as trained (aux heads included) so the checkpoint's object graph matches.
    aux = model_spec(config.model).has_aux
    trained = build_model(config.model, len(labels["classes"]), config.image_size, aux=aux)
    restore_newest(tf.train.Checkpoint(model=trained), checkpoint_dir, partial=True)
    if isinstance(trained.outputs, list) and len(trained.outputs) > 1:
        return keras.Model(trained.inputs, trained.outputs[0], name=trained.name), config, labels
    return trained, config, labels
