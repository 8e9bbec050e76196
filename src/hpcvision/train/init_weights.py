"""Initial weights for fine-tuning (`train --init-checkpoint PATH`) and the frozen backbone.

PATH is a run folder (its newest usable checkpoint), one checkpoint prefix of a run (`run/ckpt-300`),
an `hpcvision export` folder, a `.keras` file, a Keras 3 `.weights.h5` or a Keras 2 `.h5` weights file
(what `keras.applications` downloads). Every source is read into the same form, its weighted layers in
the file's order with their arrays, and loaded onto the model by layer name and shape: a layer whose
shapes differ (a head of another class count) or that the source lacks keeps its fresh initialisation,
and the log names it; so do the heads when the source's labels.json names other classes than this run's.
Only weights move: step, optimizer state and schedule start from zero.

keras.applications' `vgg16` uses our layer names; its classifier `predictions` is our `logits`. Its
`inception_v3` names layers by counters (`conv2d_17`, `batch_normalization_17`), so those are matched
by position instead: the k-th convolution (batch norm, dense layer) in the file's layer order is the
k-th in ours, as Keras itself loads its Keras 2 weights files into its Keras 3 models (the two graphs
are the same, so their layer orders are too).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import zipfile
from pathlib import Path

import numpy as np

from hpcvision.errors import UserError

log = logging.getLogger(__name__)

RENAMED = {"predictions": "logits"}  # keras.applications' classifier
_COUNTER = re.compile(r"(conv2d|batch_normalization|dense)(?:_(\d+))?")  # Keras' automatic layer names


def is_head(name: str) -> bool:
    """A classifier layer: `logits` and the auxiliary heads' (`aux_logits`, googlenet's `aux1_logits`...):
    what --freeze-backbone leaves trainable, and what starts fresh when the source knew other classes."""
    return name == "logits" or name.endswith("_logits")


@dataclasses.dataclass(frozen=True)
class SourceLayer:
    """One weighted layer of a weights source: its name, its kind (Keras' class name in snake case, for
    files that name layers by counters) and its arrays in Keras' order (kernel, bias; gamma, beta, ...)."""

    name: str
    kind: str
    arrays: tuple[np.ndarray, ...]


def load_initial_weights(model, path: str | Path, classes: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Copy the weights of `path` onto `model` by layer name and shape; (loaded layers, 'name (why)' of the others).

    `classes` (this run's wnids) keeps the heads fresh when the source names other classes in its labels.json
    (a run or export folder): same shape, other meaning. UserError when `path` is no weights source or
    shares no layer with `model`."""
    source = Path(path)
    layers = read_source(source)
    by_name = _by_name(model, layers)
    theirs = source_classes(source)
    other_classes = classes is not None and theirs is not None and list(theirs) != list(classes)
    loaded, skipped = [], []
    for layer in (layer for layer in model.layers if layer.weights):
        found = by_name.get(layer.name)
        problem = _shape_problem(layer, found)
        if not problem and other_classes and is_head(layer.name):
            problem = "the source was trained on other classes"
        if problem:
            skipped.append(f"{layer.name} ({problem})")
            continue
        for variable, array in zip(layer.weights, found.arrays, strict=True):
            variable.assign(np.asarray(array, dtype=variable.dtype))
        loaded.append(layer.name)
    if not loaded:
        raise UserError(f"{source}: no layer of it fits --model {model.name} (by name and shape); "
                        f"it holds {', '.join(layer.name for layer in layers[:5])}...")
    log.info("initial weights from %s: %d of %d layers loaded%s", source, len(loaded), len(loaded) + len(skipped),
             f"; not loaded (initialised afresh): {', '.join(skipped)}" if skipped else "")
    return loaded, skipped


def source_classes(source: Path) -> list[str] | None:
    """The wnids in the labels.json of a run or export folder (of a checkpoint prefix's folder), else None."""
    folder = source if source.is_dir() else source.parent if Path(f"{source}.index").is_file() else None
    if folder is None or not (folder / "labels.json").is_file():
        return None
    from hpcvision.train.checkpoint import load_labels

    return [entry.get("wnid", "") for entry in load_labels(folder)["classes"]]


def _shape_problem(layer, found: SourceLayer | None) -> str | None:
    """Why `found` cannot fill `layer`, or None when its arrays have the layer's shapes."""
    if found is None:
        return "not in the source"
    ours = [tuple(v.shape) for v in layer.weights]
    theirs = [tuple(a.shape) for a in found.arrays]
    return None if ours == theirs else f"shapes {theirs} in the source, {ours} here"


def _by_name(model, layers: list[SourceLayer]) -> dict[str, SourceLayer]:
    """The source's layers under our names: as they are, `predictions` as `logits`, and Keras' counter names
    by position when the model uses other names (keras.applications' inception_v3)."""
    named = {RENAMED.get(layer.name, layer.name): layer for layer in layers}
    ours = {layer.name for layer in model.layers if layer.weights}
    counted = [layer for layer in layers if _COUNTER.fullmatch(layer.name) and layer.name not in ours]
    if counted and len(counted) > len(layers) // 2:
        named.update(_by_position(model, counted))
    return named


def _by_position(model, counted: list[SourceLayer]) -> dict[str, SourceLayer]:
    """Our names of `counted` source layers: the k-th of a kind in the source is the k-th of that kind in
    the topological layer order of our model built without auxiliary heads (keras.applications has none)."""
    from hpcvision.models import build_model, model_spec
    from hpcvision.models.common import ModelError

    try:
        spec = model_spec(model.name)  # our builders name the Keras model as the registry does
    except ModelError:
        return {}
    plain = model if not spec.has_aux else build_model(spec.name, 2, model.inputs[0].shape[1], aux=False)
    order: dict[str, list[str]] = {}
    for layer in plain.layers:
        if layer.weights and not is_head(layer.name):
            order.setdefault(_snake(type(layer).__name__), []).append(layer.name)
    mapped, seen = {}, {}
    for layer in counted:
        index = seen[layer.kind] = seen.get(layer.kind, -1) + 1
        names = order.get(layer.kind, [])
        if index < len(names):
            mapped[names[index]] = layer
    return mapped


def _snake(class_name: str) -> str:
    """`BatchNormalization` -> `batch_normalization`, as Keras names layers and weights-file groups."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower().replace("2_d", "2d")


def read_source(path: Path) -> list[SourceLayer]:
    """The weighted layers of a run folder, a checkpoint prefix, an export folder, a `.keras` or an h5 file."""
    if path.is_dir() and (path / "model.keras").is_file() and not (path / "run.yaml").is_file():
        return read_source(path / "model.keras")  # an export folder
    if path.is_dir() or Path(f"{path}.index").is_file():
        return _read_run(path)
    check_source(path)
    if path.suffix == ".keras":
        return _read_keras_archive(path)
    return _read_h5(path, path)


def check_source(path: Path) -> None:
    """UserError unless `path` is a folder, a file or a checkpoint prefix (no TensorFlow needed)."""
    if not (path.is_dir() or path.is_file() or Path(f"{path}.index").is_file()):
        raise UserError(f"{path}: not found (--init-checkpoint takes a run folder, a checkpoint prefix, an export "
                        "folder, a .keras file or a .weights.h5/.h5 file)")


def _read_run(path: Path) -> list[SourceLayer]:
    """A run folder's newest usable checkpoint, or the checkpoint `path` names, as its run.yaml describes it."""
    from hpcvision.train.checkpoint import restore_run_model

    model, _, _ = restore_run_model(path.parent if not path.is_dir() else path, None if path.is_dir() else path)
    return [SourceLayer(layer.name, _snake(type(layer).__name__), tuple(w.numpy() for w in layer.weights))
            for layer in model.layers if layer.weights]


def _read_keras_archive(path: Path) -> list[SourceLayer]:
    """The weights of a `.keras` file (a zip holding `model.weights.h5`)."""
    import io

    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read("model.weights.h5")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable .keras file ({exc})") from None
    return _read_h5(io.BytesIO(data), path)


def _read_h5(file, path: Path) -> list[SourceLayer]:
    """Keras 3 weights (`layers/<kind>_<k>/vars/<i>`) or Keras 2 weights (`layer_names`, `weight_names`)."""
    import h5py

    try:
        with h5py.File(file, "r") as h5:
            root = h5["model_weights"] if "model_weights" in h5 else h5
            if "layer_names" in root.attrs:
                return _keras2_layers(root)
            if "layers" in root:
                return _keras3_layers(root["layers"])
    except OSError as exc:
        raise UserError(f"{path}: not a readable weights file ({str(exc).splitlines()[0]})") from None
    raise UserError(f"{path}: holds no Keras weights (neither Keras 3 'layers' nor Keras 2 'layer_names')")


def _keras2_layers(root) -> list[SourceLayer]:
    """Keras 2's h5 layout: layers in the model's order, each with its weights' names in Keras' order."""
    layers = []
    for raw in root.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        group = root[name]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
        if names:
            match = _COUNTER.fullmatch(name)
            layers.append(SourceLayer(name, match.group(1) if match else "",
                                      tuple(np.asarray(group[n]) for n in names)))
    return layers


def _keras3_layers(groups) -> list[SourceLayer]:
    """Keras 3's layout: groups keyed `<kind>_<k>` (the k-th layer of that kind in the model's order), the
    layer's own name in the `vars` group's `name` attribute."""
    layers = []
    for key in groups:
        variables = groups[key].get("vars")
        if variables is None or not len(variables):
            continue
        kind, _, position = re.fullmatch(r"(.*?)(_(\d+))?", key).groups()
        name = variables.attrs.get("name", key)
        name = name.decode() if isinstance(name, bytes) else str(name)
        arrays = tuple(np.asarray(variables[str(i)]) for i in range(len(variables)))
        layers.append((kind, int(position or 0), SourceLayer(name, kind, arrays)))
    return [layer for _, _, layer in sorted(layers, key=lambda item: item[:2])]


def freeze_backbone(model) -> int:
    """Make every layer but the classifier head untrainable (batch norm then runs in inference mode, as in
    Keras' transfer-learning guide); the number of layers frozen."""
    frozen = 0
    for layer in model.layers:
        if layer.weights and not is_head(layer.name):
            layer.trainable = False
            frozen += 1
    return frozen
