"""The model zoo: sizes against published figures and keras.applications, forward passes at small
sizes, the registry's contract (logits/features layers, aux outputs), and the GPU benchmark's smoke run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from hpcvision.models import build_model, model_names, model_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "src" / "hpcvision" / "models"
ZOO = ["alexnet", "vgg16", "googlenet", "inception_v3", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
# A small input each network accepts (AlexNet's and Inception v3's minimums are 63 and 75).
SMALL = {
    "alexnet": 64,
    "vgg16": 32,
    "googlenet": 32,
    "inception_v3": 75,
    "resnet18": 64,
    "resnet34": 32,
    "resnet50": 32,
    "resnet101": 32,
    "resnet152": 32,
}


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    # Building a 138 M-parameter model after another keeps both alive unless the session is cleared.
    yield
    keras.backend.clear_session()


def _forward(model: keras.Model, image_size: int) -> list[np.ndarray]:
    """Logits (and aux logits) for two random images, checked finite."""
    images = np.random.default_rng(0).normal(size=(2, image_size, image_size, 3)).astype("float32")
    outputs = model(images, training=False)
    outputs = [keras.ops.convert_to_numpy(o) for o in (outputs if isinstance(outputs, list | tuple) else [outputs])]
    for logits in outputs:
        assert np.isfinite(logits).all()
    return outputs


def _conv_kernel_shapes(model: keras.Model) -> list[tuple[int, ...]]:
    return sorted(tuple(layer.kernel.shape) for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


def _conv_bias_count(model: keras.Model) -> int:
    return sum(int(layer.bias.shape[0]) for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)


def test_zoo_is_registered_with_published_sizes():
    assert set(ZOO) <= set(model_names())
    for name in ZOO:
        assert model_spec(name).params_published, name
    assert model_spec("inception_v3").image_size == 299
    assert {name for name in ZOO if model_spec(name).has_aux} == {"googlenet", "inception_v3"}


@pytest.mark.parametrize("name", ZOO)
def test_published_size_and_a_forward_pass_at_a_small_size(name):
    # One build serves both checks: the parameter count does not depend on the input size (global or
    # fixed-grid pooling before the dense layers), which test_vgg16/inception_v3_equals... confirm at 224.
    image_size = SMALL[name]
    model = build_model(name, num_classes=1000, image_size=image_size)
    params = model.count_params()
    assert params == pytest.approx(model_spec(name).params_published * 1e6, rel=0.015), f"{name}: {params:,}"
    logits = _forward(model, image_size)
    assert len(logits) == 1 and logits[0].shape == (2, 1000)
    # The registry's contract: a float32 Dense "logits" fed by the embedding layer "features".
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("logits").input is model.get_layer("features").output


def test_resnet50_has_the_layers_of_keras_applications():
    ours = build_model("resnet50", 1000, 224)
    reference = keras.applications.ResNet50(weights=None)
    # Same convolutions; keras.applications adds a bias to each conv, which the BN after it cancels:
    # we leave those out, so the totals differ by exactly the reference's conv biases.
    assert _conv_kernel_shapes(ours) == _conv_kernel_shapes(reference)
    assert _conv_bias_count(ours) == 0
    assert ours.count_params() == reference.count_params() - _conv_bias_count(reference)


def test_vgg16_equals_keras_applications():
    ours = build_model("vgg16", 1000, 224)
    reference = keras.applications.VGG16(weights=None)
    assert _conv_kernel_shapes(ours) == _conv_kernel_shapes(reference)
    assert ours.count_params() == reference.count_params() == 138_357_544


def test_inception_v3_equals_keras_applications():
    ours = build_model("inception_v3", 1000)
    reference = keras.applications.InceptionV3(weights=None)
    assert _conv_kernel_shapes(ours) == _conv_kernel_shapes(reference)
    assert ours.count_params() == reference.count_params()


def test_aux_heads_add_the_expected_parameters_and_outputs():
    # Inception v3 with its 17x17 head: torchvision's inception_v3 has 27.16 M; at 75 px the head still works.
    model = build_model("inception_v3", 1000, 75, aux=True)
    assert model.count_params() == pytest.approx(27.16e6, rel=0.015)
    assert [logits.shape for logits in _forward(model, 75)] == [(2, 1000)] * 2
    keras.backend.clear_session()

    # GoogLeNet's two heads, counted by hand from the paper: 1x1 conv 128 (+BN), FC 2048->1024, FC 1024->classes.
    def head(channels: int, classes: int) -> int:
        return channels * 128 + 4 * 128 + (4 * 4 * 128 + 1) * 1024 + (1024 + 1) * classes

    without = build_model("googlenet", 7, 32).count_params()
    keras.backend.clear_session()
    model = build_model("googlenet", 7, 32, aux=True)
    assert model.count_params() - without == head(512, 7) + head(528, 7)
    assert [logits.shape for logits in _forward(model, 32)] == [(2, 7)] * 3


def test_logits_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("resnet18", num_classes=5, image_size=32)
        assert model.get_layer("features").compute_dtype == "bfloat16"
        assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_resnet_zero_initialises_the_last_batchnorm_of_each_block():
    from hpcvision.models.resnet import build_resnet

    def gammas(model, layer):
        return model.get_layer(layer).gamma.numpy()

    model = build_resnet(18, num_classes=10, image_size=32)
    assert not gammas(model, "stage3_block1_conv2_bn").any()  # last BN of a block
    assert (gammas(model, "stage3_block1_conv1_bn") == 1).all()  # the others start at one
    keras.backend.clear_session()
    model = build_resnet(50, num_classes=10, image_size=32, zero_init_residual=False)
    assert (gammas(model, "stage2_block1_conv3_bn") == 1).all()


@pytest.mark.parametrize(("name", "size", "minimum"), [("alexnet", 32, 63), ("inception_v3", 64, 75)])
def test_too_small_inputs_are_refused_with_the_minimum(name, size, minimum):
    with pytest.raises(ValueError, match=f"{name} needs image_size >= {minimum}"):
        build_model(name, 10, size)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*resnet50"):
        build_model("nope", 10)


def test_no_model_module_imports_tensorflow():
    tf_import = re.compile(r"^\s*(import tensorflow|from tensorflow)", re.MULTILINE)
    files = sorted(MODELS_DIR.glob("*.py"))
    assert {"alexnet.py", "vgg.py", "googlenet.py", "inception_v3.py", "resnet.py"} <= {f.name for f in files}
    offenders = [f.name for f in files if tf_import.search(f.read_text())]
    assert not offenders, f"models/ must stay Keras-only: {offenders} import tensorflow"


def test_models_import_without_tensorflow_on_the_jax_backend():
    code = (
        "import sys; from hpcvision.models import model_names; names = model_names(); "
        "print(len(names), 'tensorflow' in sys.modules)"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, tensorflow_loaded = result.stdout.split()
    assert int(count) >= len(ZOO)
    assert tensorflow_loaded == "False"


@pytest.mark.slow
def test_gpu_benchmark_quick_run(tmp_path):
    # A fresh interpreter, unlike the other benchmark tests: the script needs Keras on the JAX backend,
    # which is fixed when keras is first imported, and this process already runs Keras on TensorFlow.
    out = tmp_path / "gpu.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_models.py"), "--quick", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [m["model"] for m in report["models"]] == ["resnet50", "resnet18"]
    assert report["baseline"]["model"] == "keras.applications.ResNet50"
    for entry in [*report["models"], report["baseline"]]:
        assert entry["img_per_s"] > 0 and np.isfinite(entry["final_loss"])
        assert entry["image_size"] == 32
        assert entry["conv_policy"] == "mixed_bfloat16", entry["model"]  # bf16 for every model, not only the first
    assert report["ratio_resnet50_vs_baseline"] > 0
    assert "hpcvision resnet50 / keras.applications.ResNet50" in result.stdout
    assert "6,699 img/s" in result.stdout
