"""Models registered by name, so adding a network is one file and one decorator.

Contract every builder keeps (the training loop, export and `features` rely on it):
- input: float images NHWC, already normalised by the input pipeline;
- output: logits (no softmax) from a final Dense layer named "logits" with dtype float32, so
  mixed precision never produces bf16 logits; the layer feeding it is the embedding ("features");
- with `aux=True`, models that have auxiliary classifiers return [logits, aux_logits, ...].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras

from hpcvision.models.common import ModelError


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of hpcvision needs to know about a network besides its layers."""

    name: str
    build: Callable[..., keras.Model]
    image_size: int  # the resolution it was published at
    has_aux: bool = False
    params_published: float | None = None  # millions, at 1000 classes and `image_size`


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, image_size: int, has_aux: bool = False, params_published: float | None = None):
    """Decorator: register `build(num_classes, image_size, aux=False) -> keras.Model` under `name`."""

    def decorate(build: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        _REGISTRY[name] = ModelSpec(name, build, image_size, has_aux, params_published)
        return build

    return decorate


def model_names() -> list[str]:
    """All registered model names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The spec registered under `name`; ModelError (a ValueError) naming the choices if unknown."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model '{name}' (choose from {', '.join(sorted(_REGISTRY))})") from None


def build_model(name: str, num_classes: int, image_size: int | None = None, *, aux: bool = False,
                synchronized_batch_norm: bool = False) -> keras.Model:
    """Build the registered network `name` for `num_classes` classes at `image_size` pixels; with
    `synchronized_batch_norm`, every BatchNormalization computes its statistics over all replicas."""
    spec = model_spec(name)
    model = spec.build(num_classes=num_classes, image_size=image_size or spec.image_size, aux=aux and spec.has_aux)
    if synchronized_batch_norm:
        for layer in _every_layer(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True  # Keras' own switch (the constructor's argument), read at each call
    return model


def _every_layer(layer):
    yield layer
    for inner in getattr(layer, "layers", []):
        yield from _every_layer(inner)


def _load_all() -> None:
    # Importing the family modules runs their @register_model decorators.
    import importlib
    import pkgutil

    import hpcvision.models as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "registry":
            importlib.import_module(f"hpcvision.models.{module.name}")
