"""Fine-tuning: `train --init-checkpoint` from our runs and files and from keras.applications' weights files,
and `--freeze-backbone`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from hpcvision.errors import UserError

SOURCE = ["--synthetic", "--model", "small", "--image-size", "28", "--batch-size", "16", "--log-every", "1"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A finished 3-step `small` run of 10 classes with ckpt-2 and ckpt-3."""
    from hpcvision.cli import main

    folder = tmp_path_factory.mktemp("source") / "run"
    assert main(["train", *SOURCE, "--num-classes", "10", "--steps", "3", "--checkpoint-every-steps", "2",
                 "--checkpoint-dir", str(folder)]) == 0
    return folder


def weighted(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers if layer.weights}


def test_frozen_fine_tune_of_another_class_count_keeps_the_backbone_exactly(run_cli, source_run, tmp_path, caplog):
    from hpcvision.train.checkpoint import load_trained_model

    caplog.set_level(logging.INFO, logger="hpcvision")
    code, _out, err = run_cli("train", *SOURCE, "--num-classes", "7", "--steps", "3", "--checkpoint-dir",
                              tmp_path / "ft", "--init-checkpoint", source_run, "--freeze-backbone")
    assert code == 0, err
    messages = [r.getMessage() for r in caplog.records]
    assert any("starting at step 0" in m for m in messages), messages
    (line,) = [m for m in messages if m.startswith("initial weights from")]
    assert "8 of 9 layers loaded; not loaded (initialised afresh): logits (shapes [(256, 10), (10,)] in the " \
           "source, [(256, 7), (7,)] here)" in line
    source, _, _ = load_trained_model(source_run)
    tuned, _, _ = load_trained_model(tmp_path / "ft")
    before, after = weighted(source), weighted(tuned)
    assert set(before) == set(after)
    for name in before:  # batch norm's moving statistics too: it ran in inference mode
        if name != "logits":
            assert all(np.array_equal(a, b) for a, b in zip(before[name], after[name], strict=True)), name
    images = np.random.default_rng(0).normal(size=(4, 28, 28, 3)).astype("float32")
    features = [m.get_layer("features").output for m in (source, tuned)]
    import keras

    embed = [keras.Model(m.inputs, f)(images).numpy() for m, f in zip((source, tuned), features, strict=True)]
    assert np.array_equal(*embed)
    assert tuned.get_layer("logits").kernel.shape == (256, 7)


def test_a_keras_file_a_checkpoint_prefix_and_bad_paths(source_run, tmp_path):
    from hpcvision.models import build_model
    from hpcvision.train.checkpoint import load_trained_model
    from hpcvision.train.init_weights import load_initial_weights

    trained, _, _ = load_trained_model(source_run)
    trained.save(tmp_path / "model.keras")
    fresh = build_model("small", 10, 28)
    loaded, skipped = load_initial_weights(fresh, tmp_path / "model.keras")
    assert len(loaded) == 9 and skipped == []
    assert all(np.array_equal(a, b) for name in loaded
               for a, b in zip(weighted(trained)[name], weighted(fresh)[name], strict=True))

    import tensorflow as tf

    load_initial_weights(fresh, source_run / "ckpt-2")
    reader = tf.train.load_checkpoint(str(source_run / "ckpt-2"))
    (key,) = [k for k, s in reader.get_variable_to_shape_map().items()
              if "/_trainable_variables/" in k and list(s) == [3, 3, 3, 32]]
    assert np.array_equal(fresh.get_layer("conv1").kernel.numpy(), reader.get_tensor(key))

    same = [f"class_{i}" for i in range(10)]  # the synthetic run's wnids
    assert load_initial_weights(fresh, source_run, same)[1] == []
    other = [f"n{i:08d}" for i in range(10)]  # same count, other classes: the head means nothing here
    assert load_initial_weights(fresh, source_run, other)[1] == ["logits (the source was trained on other classes)"]
    export = tmp_path / "export"  # what `hpcvision export` writes beside its SavedModel
    export.mkdir()
    shutil.copy(tmp_path / "model.keras", export)
    shutil.copy(source_run / "labels.json", export)
    assert load_initial_weights(fresh, export, other)[1] == ["logits (the source was trained on other classes)"]

    with pytest.raises(UserError, match="not found"):
        load_initial_weights(fresh, tmp_path / "missing.h5")
    other = build_model("resnet18", 10, 32)
    with pytest.raises(UserError, match="no layer of it fits --model resnet18"):
        load_initial_weights(other, tmp_path / "model.keras")


def randomised(app, rng) -> None:
    """Every weight of `app` random (batch norm's too, so a layer loaded into the wrong place shows)."""
    for layer in app.layers:
        layer.set_weights([np.abs(w) + 0.5 if "variance" in v.path else rng.normal(0, 0.05, w.shape).astype("float32")
                           for v, w in zip(layer.weights, layer.get_weights(), strict=True)])


@pytest.mark.slow
def test_keras_applications_weights_files_map_onto_ours(tmp_path):
    """keras.applications' files as downloaded (Keras 2 h5: vgg16 by name, inception_v3 by counters) and
    as Keras 3 saves them (.weights.h5): the same outputs as keras.applications' own model."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from hpcvision.models import build_model
    from hpcvision.train.init_weights import load_initial_weights

    rng = np.random.default_rng(0)
    vgg = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10)
    randomised(vgg, rng)
    with h5py.File(tmp_path / "vgg16.h5", "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, vgg)
    ours = build_model("vgg16", 10, 32)
    loaded, skipped = load_initial_weights(ours, tmp_path / "vgg16.h5")
    # Ours pools to 7x7 before fc1 at any size, theirs flattens 1x1 at 32 px: only fc1 differs.
    assert len(loaded) == 15 and [s.split(" ")[0] for s in skipped] == ["fc1"]
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    theirs = keras.Model(vgg.inputs, vgg.get_layer("block5_pool").output)(images)
    mine = keras.Model(ours.inputs, ours.get_layer("block5_pool").output)(images)
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours.get_layer("logits").kernel.numpy(), vgg.get_layer("predictions").kernel.numpy())

    inception = keras.applications.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=10)
    randomised(inception, rng)
    with h5py.File(tmp_path / "inception_v3.h5", "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, inception)
    inception.save_weights(tmp_path / "inception_v3.weights.h5")
    images = rng.normal(size=(2, 75, 75, 3)).astype("float32")
    expected = inception(images).numpy()
    for name in ("inception_v3.h5", "inception_v3.weights.h5"):
        ours = build_model("inception_v3", 10, 75)
        loaded, skipped = load_initial_weights(ours, tmp_path / name)
        assert len(loaded) == 189 and skipped == [], name
        np.testing.assert_allclose(keras.ops.softmax(ours(images)).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_freezing_leaves_every_classifier_layer_trainable_and_nothing_else():
    from hpcvision.models import build_model
    from hpcvision.train.init_weights import freeze_backbone

    model = build_model("googlenet", 5, 64, aux=True)
    freeze_backbone(model)
    assert {layer.name for layer in model.layers if layer.trainable and layer.weights} == {
        "logits", "aux1_logits", "aux2_logits"}
    assert len(model.trainable_variables) == 6
