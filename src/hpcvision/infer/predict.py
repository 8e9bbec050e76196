"""A trained classifier loaded from a checkpoint directory or an export, and `predict` on image files.

Both sources give the same `Classifier`: the evaluation preprocessing of the run (crop, size,
normalisation from run.yaml), logits, penultimate-layer features and the class table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from hpcvision.errors import UserError, op_error_line
from hpcvision.infer.config import EXPORT_INFO
from hpcvision.train.checkpoint import load_labels

log = logging.getLogger(__name__)



@dataclass
class Classifier:
    """A model's evaluation view: `preprocess` image bytes, then `logits` / `features` of batches."""

    image_size: int
    normalize: str
    central_fraction: float
    classes: list[dict[str, Any]]  # [{"index": 0-based, "wnid", "text"}] in index order
    label_offset: int
    step: int | None
    model_name: str
    source: str
    _preprocess: Callable[[tf.Tensor], tf.Tensor]
    _logits: Callable[[tf.Tensor], tf.Tensor]
    _features: Callable[[tf.Tensor], tf.Tensor]
    keras_model: Any = None  # set when loaded from a checkpoint (export saves it)
    labels: dict[str, Any] | None = None  # labels.json content
    saved_model: Any = None  # the loaded export; its functions need it alive

    def preprocess(self, encoded: bytes) -> tf.Tensor:
        """Encoded image bytes -> float32 [S,S,3] normalised; tf.errors.OpError if undecodable."""
        return self._preprocess(tf.constant(encoded))

    def logits(self, images: tf.Tensor) -> np.ndarray:
        """Logits [N, classes] of preprocessed images [N,S,S,3]."""
        return self._logits(tf.convert_to_tensor(images, tf.float32)).numpy()

    def features(self, images: tf.Tensor) -> np.ndarray:
        """Penultimate-layer embeddings (the input of the "logits" layer) of preprocessed images."""
        return self._features(tf.convert_to_tensor(images, tf.float32)).numpy()

    def top_k(self, logits: np.ndarray, k: int = 5) -> list[list[tuple[dict[str, Any], float]]]:
        """For each row: the k most probable classes with their softmax probabilities."""
        probs = tf.nn.softmax(tf.convert_to_tensor(logits, tf.float32)).numpy()
        order = np.argsort(-probs, axis=1, kind="stable")[:, : min(k, probs.shape[1])]
        return [[(self.classes[i], float(p[i])) for i in row] for p, row in zip(probs, order, strict=True)]


def _classes(labels: dict[str, Any], source: str) -> list[dict[str, Any]]:
    classes = sorted(labels["classes"], key=lambda c: int(c["index"]))
    if [int(c["index"]) for c in classes] != list(range(len(classes))):
        raise UserError(f"{source}: labels.json class indices are not 0..{len(classes) - 1}")
    return classes


def _checkpoint_step(checkpoint_dir: str | Path) -> int | None:
    """The `step` variable of the newest checkpoint that can be read (None if it has none)."""
    from hpcvision.train.checkpoint import checkpoint_prefixes

    for prefix in checkpoint_prefixes(checkpoint_dir):
        try:
            reader = tf.train.load_checkpoint(prefix)
            return int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
        except Exception:  # noqa: BLE001 - unreadable or stepless checkpoints: try the previous one
            continue
    return None


def feature_model(model):
    """A Keras model mapping the same inputs to the input of the "logits" layer."""
    import keras

    try:
        layer = model.get_layer("logits")
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        return keras.Model(inputs, layer.input, name=f"{model.name}_features")
    except (ValueError, AttributeError) as exc:
        raise UserError(f"model '{model.name}' has no functional 'logits' layer to take features from: {exc}") from None


def from_checkpoint(checkpoint_dir: str | Path) -> Classifier:
    """The classifier of a training run: newest usable checkpoint, preprocessing from run.yaml."""
    from hpcvision.data.presets import preprocess_for_eval
    from hpcvision.train.checkpoint import load_trained_model

    model, config, labels = load_trained_model(checkpoint_dir)
    image_size = int(model.inputs[0].shape[1])  # built at run.yaml's evaluation resolution
    normalize, fraction = config.input.normalize, config.input.eval_central_fraction()
    embed = feature_model(model)
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    return Classifier(
        image_size=image_size,
        normalize=normalize,
        central_fraction=fraction,
        classes=_classes(labels, str(checkpoint_dir)),
        label_offset=int(labels.get("label_offset", 1)),
        step=_checkpoint_step(checkpoint_dir),
        model_name=config.model,
        source=str(checkpoint_dir),
        _preprocess=tf.function(
            lambda e: preprocess_for_eval(e, image_size, normalize=normalize, central_fraction=fraction),
            input_signature=[tf.TensorSpec([], tf.string)],
        ),
        _logits=tf.function(lambda x: model(x, training=False), input_signature=[spec]),
        _features=tf.function(lambda x: embed(x, training=False), input_signature=[spec]),
        keras_model=model,
        labels=labels,
    )


def from_export(model_path: str | Path) -> Classifier:
    """The classifier of an `hpcvision export` directory (the SavedModel's own preprocessing)."""
    path = Path(model_path)
    try:
        info = json.loads((path / EXPORT_INFO).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not an hpcvision export ({exc})") from None
    labels = load_labels(path)
    try:
        saved = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as exc:
        raise UserError(f"{path}: cannot load the SavedModel: {str(exc).splitlines()[0]}") from None
    return Classifier(
        image_size=int(info["image_size"]),
        normalize=info["normalize"],
        central_fraction=float(info["central_fraction"]),
        classes=_classes(labels, str(path)),
        label_offset=int(labels.get("label_offset", 1)),
        step=info.get("step"),
        model_name=info.get("model", ""),
        source=str(path),
        _preprocess=saved.preprocess,
        _logits=saved.logits,
        _features=saved.features,
        labels=labels,
        saved_model=saved,
    )


def load_classifier(checkpoint_dir: str | Path | None = None, model_path: str | Path | None = None) -> Classifier:
    """From exactly one of a checkpoint directory or an export directory."""
    if (checkpoint_dir is None) == (model_path is None):
        raise UserError("give exactly one of --checkpoint-dir or --model-path")
    return from_checkpoint(checkpoint_dir) if checkpoint_dir is not None else from_export(model_path)


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def _check_truncated_jpeg(path: str | Path, encoded: bytes) -> None:
    # No end marker: decode with Pillow first, so a cut-off file gets our one-line error rather than
    # libjpeg's messages on stderr.
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise UserError(f"{path}: truncated or corrupt JPEG ({exc})") from None


def _check_pixel_count(path: str | Path, encoded: bytes) -> None:
    """Refuse an image whose header claims more than MAX_PIXELS, before anything is decoded.

    Refusing rather than decoding at reduced size: only JPEG can be decoded smaller (DCT scaling), a
    PNG is decoded whole whatever size is asked; and it is the limit `data build` applies, so nothing
    the model was trained or evaluated on is refused here.
    """
    from hpcvision.data.images import TooLarge, check_header_pixels

    try:
        check_header_pixels(encoded)
    except TooLarge as exc:
        raise UserError(f"{path}: {exc}; not decoded") from None


def read_and_preprocess(classifier: Classifier, path: str | Path) -> tf.Tensor:
    """One image file as the model sees it; UserError (naming the file) if unreadable."""
    try:
        encoded = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not encoded:
        raise UserError(f"{path}: empty file")
    if not encoded.startswith(_IMAGE_MAGIC):
        raise UserError(f"{path}: not a JPEG, PNG, GIF or BMP image")
    _check_pixel_count(path, encoded)
    if encoded.startswith(b"\xff\xd8") and not encoded.rstrip(b"\0").endswith(b"\xff\xd9"):
        _check_truncated_jpeg(path, encoded)
    try:
        return classifier.preprocess(encoded)
    except (tf.errors.OpError, ValueError) as exc:
        raise UserError(f"{path}: not a decodable image ({op_error_line(exc)})") from None


def predict_files(classifier: Classifier, paths: Sequence[str | Path], k: int = 5):
    """Yield (path, top-k list or None, error or None) per image, in the order given."""
    for path in paths:
        try:
            image = read_and_preprocess(classifier, path)
        except UserError as exc:
            yield path, None, str(exc)
            continue
        yield path, classifier.top_k(classifier.logits(image[tf.newaxis]), k)[0], None


def format_prediction(path: str | Path, top: list[tuple[dict[str, Any], float]]) -> str:
    """`path` then one line per class: rank, probability, wnid, human-readable name."""
    lines = [str(path)]
    for rank, (cls, prob) in enumerate(top, 1):
        lines.append(f"  {rank}. {prob:7.2%}  {cls.get('wnid', '')}  {cls.get('text', '')}")
    return "\n".join(lines)
