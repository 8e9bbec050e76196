"""`hpcvision export`: a SavedModel that serves JPEG bytes or pixels, plus a `.keras` file.

The SavedModel carries its own preprocessing (the run's evaluation crop, size and normalisation), so
a client sends raw JPEG bytes and gets the top-5 classes back, with wnids and names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf

from hpcvision.data import presets
from hpcvision.errors import UserError
from hpcvision.files import temporary_path
from hpcvision.infer.predict import EXPORT_INFO, feature_model, from_checkpoint
from hpcvision.train.checkpoint import LABELS_FILE

log = logging.getLogger(__name__)

TOP_K = 5


class ServingModule(tf.Module):
    """What the SavedModel holds: the model, its class table and four functions."""

    def __init__(self, model, classes: list[dict], image_size: int, normalize: str, central_fraction: float):
        super().__init__(name="hpcvision_classifier")
        self.model = model
        self.embedding = feature_model(model)
        self.wnids = tf.constant([c["wnid"] for c in classes])
        self.names = tf.constant([c["text"] for c in classes])
        self.k = min(TOP_K, len(classes))
        self.image_size, self.normalize, self.central_fraction = image_size, normalize, central_fraction
        pixels = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
        # Functions built here so their signatures use this export's image size.
        self.preprocess = tf.function(self._preprocess, input_signature=[tf.TensorSpec([], tf.string)])
        self.logits = tf.function(lambda x: self.model(x, training=False), input_signature=[pixels])
        self.features = tf.function(lambda x: self.embedding(x, training=False), input_signature=[pixels])
        self.serve_jpeg = tf.function(self._serve_jpeg, input_signature=[tf.TensorSpec([None], tf.string)])
        self.serve_pixels = tf.function(
            self._serve_pixels, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
        )

    def _preprocess(self, encoded):
        return presets.preprocess_for_eval(
            encoded, self.image_size, normalize=self.normalize, central_fraction=self.central_fraction
        )

    def _top_k(self, logits):
        probabilities, indices = tf.math.top_k(tf.nn.softmax(logits), k=self.k)
        return {
            "labels": indices,
            "wnids": tf.gather(self.wnids, indices),
            "names": tf.gather(self.names, indices),
            "probabilities": probabilities,
        }

    def _serve_jpeg(self, images):
        """A batch of encoded images (JPEG; PNG/GIF/BMP too) -> top-5, with the evaluation crop."""
        spec = tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32)
        batch = tf.map_fn(self._preprocess, images, fn_output_signature=spec)
        return self._top_k(self.model(batch, training=False))

    def _serve_pixels(self, images):
        """Pixels [N,H,W,3] in 0..255, any size -> resized (no crop), normalised -> top-5."""
        batch = presets.preprocess_pixels(images, self.image_size, normalize=self.normalize)
        return self._top_k(self.model(batch, training=False))


def export_model(checkpoint_dir: str | Path, out_dir: str | Path) -> dict:
    """Write OUT/{saved_model.pb, variables/, model.keras, labels.json, export.json}; returns export.json.

    All of it is written into a hidden folder in OUT first and moved into place once complete, so a
    full or read-only disk ends the export without half an export in OUT (nor the temporaries).
    """
    classifier = from_checkpoint(checkpoint_dir)
    model, labels = classifier.keras_model, classifier.labels
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    info = {
        "model": classifier.model_name,
        "step": classifier.step,
        "checkpoint_dir": str(Path(checkpoint_dir).resolve()),
        "image_size": classifier.image_size,
        "normalize": classifier.normalize,
        "central_fraction": classifier.central_fraction,
        "num_classes": len(classifier.classes),
        "signatures": {
            "serving_default": "images: string [N] encoded JPEG/PNG -> labels, wnids, names, probabilities [N,5]",
            "serving_pixels": "images: float32 [N,H,W,3] in 0..255 -> the same (resized, not cropped)",
        },
    }
    module = ServingModule(
        model, classifier.classes, classifier.image_size, classifier.normalize, classifier.central_fraction
    )
    signatures = {"serving_default": module.serve_jpeg, "serving_pixels": module.serve_pixels}
    with _staged(out) as stage:
        tf.saved_model.save(module, str(stage), signatures=signatures)
        model.save(stage / "model.keras")
        (stage / LABELS_FILE).write_text(json.dumps(labels, indent=1) + "\n")
        (stage / EXPORT_INFO).write_text(json.dumps(info, indent=1) + "\n")
    log.info("exported %s (step %s) to %s", classifier.model_name, classifier.step, out)
    return info


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A hidden folder in `out` to write into; on success its entries replace those of the same name in
    `out`, else it is removed (and `out`, if made here). An OSError of ours names `out`."""
    made = not out.exists()
    stage = temporary_path(out / "export")
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
        yield stage
        for entry in sorted(stage.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():  # a previous export's variables/ or assets/
                shutil.rmtree(target)
            os.replace(entry, target)
        stage.rmdir()
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()
        if isinstance(exc, OSError) and exc.errno is not None and str(stage) in str(exc.filename or stage):
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(out)) from exc
        raise
