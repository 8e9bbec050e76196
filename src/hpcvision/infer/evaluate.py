"""`hpcvision evaluate`: top-1, top-5, per-class accuracy and a confusion matrix over one split.

Every record of the split is read exactly once (no repeat, last partial batch kept).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hpcvision.data.shards import manifest_path, read_manifest
from hpcvision.errors import UserError
from hpcvision.files import write_atomic
from hpcvision.infer.predict import Classifier
from hpcvision.progress import progress

log = logging.getLogger(__name__)


class Tally:
    """Running counts of correct top-1/top-5 predictions and the confusion matrix."""

    def __init__(self, num_classes: int):
        self.confusion = np.zeros((num_classes, num_classes), np.int64)  # [true, predicted]
        self.top5_hits = 0
        self.count = 0

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        k = min(5, logits.shape[1])
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        np.add.at(self.confusion, (labels, top[:, 0]), 1)
        self.top5_hits += int((top == labels[:, None]).any(axis=1).sum())
        self.count += len(labels)

    def metrics(self, classes: list[dict[str, Any]]) -> dict[str, Any]:
        per_class_count = self.confusion.sum(axis=1)
        correct = np.diag(self.confusion)
        per_class = {
            cls["wnid"] or str(cls["index"]): {
                "index": int(cls["index"]),
                "text": cls.get("text", ""),
                "accuracy": float(correct[i] / per_class_count[i]) if per_class_count[i] else None,
                "count": int(per_class_count[i]),
            }
            for i, cls in enumerate(classes)
        }
        return {
            "top1": float(correct.sum() / self.count) if self.count else 0.0,
            "top5": float(self.top5_hits / self.count) if self.count else 0.0,
            "num_examples": self.count,
            "per_class": per_class,
        }


def check_label_map(classes: list[dict[str, Any]], manifest: dict, source: str, reference: str) -> None:
    """The split's classes (manifest at `source`) must be `classes`, the 0-based label map of `reference`
    (a model's labels.json, a training split): same count, same wnid at each index where both name one."""
    wanted = len(classes)
    if manifest.get("num_classes") and int(manifest["num_classes"]) != wanted:
        raise UserError(f"{source}: {manifest['num_classes']} classes, but {reference} has {wanted}")
    offset = int(manifest.get("label_offset", 1))
    for item in manifest.get("labels", []):
        index = int(item["label"]) - offset
        if 0 <= index < wanted and item.get("wnid") and classes[index].get("wnid"):
            if item["wnid"] != classes[index]["wnid"]:
                raise UserError(
                    f"{source}: label {item['label']} is {item['wnid']} here but "
                    f"{classes[index]['wnid']} in {reference}"
                )


def confusion_png(confusion: np.ndarray, classes: list[dict[str, Any]], title: str) -> bytes:
    """Row-normalised confusion matrix as PNG bytes (class names on the axes up to 30 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    n = len(classes)
    size = min(4 + 0.35 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        names = [c.get("text", "").split(",")[0] or c.get("wnid", "") for c in classes]
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        if n <= 12:
            for (i, j), value in np.ndenumerate(confusion):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_summaries(writer, metrics: dict[str, Any], png: bytes, step: int) -> None:
    """top1/top5 scalars and the confusion matrix image through `writer` (a run's logs/eval)."""
    import tensorflow as tf

    from hpcvision.train.summaries import write_scalars

    write_scalars(writer, {name: metrics[name] for name in ("top1", "top5")}, step)
    with writer.as_default(step=step):
        tf.summary.image("confusion_matrix", tf.io.decode_png(png, channels=3)[tf.newaxis], step=step)
    writer.close()


def _open_outputs(out: Path, log_dir: str | Path | None):
    """Create OUT and the summary writer before the long part, so an unwritable folder (a read-only
    checkpoint folder) ends the command before anything is written; the writer, or None."""
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    return None if log_dir is None else tf.summary.create_file_writer(str(log_dir))


def _tally(classifier: Classifier, dataset, manifest: dict, name: str, source: str) -> Tally:
    tally = Tally(len(classifier.classes))
    with progress(manifest.get("num_examples"), f"evaluate {name}") as bar:
        for images, labels in dataset:
            labels = labels.numpy()
            if labels.size and (labels.min() < 0 or labels.max() >= len(classifier.classes)):
                raise UserError(f"{source}: label {labels.min()}..{labels.max()} outside the model's classes")
            tally.add(classifier.logits(images), labels)
            bar.update(len(labels))
    return tally


def evaluate(
    classifier: Classifier,
    data_dir: str | Path,
    name: str,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    log_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate over every record of `DIR/<name>-*`; writes OUT/metrics.json and the confusion PNGs.

    A record whose image does not decode is skipped and counted (`skipped_records`), not fatal.
    """
    from hpcvision.data.input_config import InputConfig
    from hpcvision.data.pipeline import make_dataset, report_skipped

    manifest = read_manifest(data_dir, name)
    source = str(manifest_path(data_dir, name))
    check_label_map(classifier.classes, manifest, source, "the model's labels.json")
    out = Path(out_dir)
    writer = _open_outputs(out, log_dir)
    preprocessing = InputConfig(normalize=classifier.normalize, central_fraction=classifier.central_fraction)
    dataset = make_dataset(data_dir, name, preprocessing, training=False, batch_size=batch_size,
                           image_size=classifier.image_size)
    tally = _tally(classifier, dataset, manifest, name, source)
    metrics = tally.metrics(classifier.classes)
    metrics.update(
        {"checkpoint_step": classifier.step, "model": classifier.model_name, "source": classifier.source,
         "data": str(data_dir), "name": name,
         "skipped_records": report_skipped(data_dir, name, tally.count)}
    )
    title = f"{classifier.model_name} step {classifier.step}: top-1 {metrics['top1']:.2%} on {name}"
    png = confusion_png(tally.confusion, classifier.classes, title)
    matrix = io.BytesIO()
    np.save(matrix, tally.confusion)
    write_atomic(out / "confusion_matrix.npy", matrix.getvalue())
    write_atomic(out / "confusion_matrix.png", png)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    if writer is not None:
        write_summaries(writer, metrics, png, int(classifier.step or 0))
    return metrics
