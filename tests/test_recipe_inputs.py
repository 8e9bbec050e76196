"""The recipe's input side (issue 11): inception colour distortion, and the recipe files in configs/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def jpeg(pixels: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.io.encode_jpeg(pixels.astype(np.uint8), quality=100).numpy()


def quadrants() -> np.ndarray:
    """Four flat 16 x 16 blocks of different colours."""
    image = np.zeros((32, 32, 3))
    for (y, x), colour in zip([(0, 0), (0, 16), (16, 0), (16, 16)], [(200, 40, 40), (40, 180, 60), (30, 60, 220),
                                                                      (230, 210, 90)], strict=True):
        image[y:y + 16, x:x + 16] = colour
    return image


def train_unit(encoded: bytes, seed: int, distort: bool) -> np.ndarray:
    import tensorflow as tf

    from hpcvision.data.input_config import InputConfig
    from hpcvision.data.presets import train_image

    config = InputConfig(augment="none", flip=False, normalize="unit", color_distortion=distort)
    seeds = tf.constant([seed, 1, seed, 2], tf.int64)
    return train_image(tf.constant(encoded), None, seeds, 32, config).numpy()


def test_colour_distortion_keeps_the_geometry_and_varies_with_the_seed():
    encoded = jpeg(quadrants())
    plain = train_unit(encoded, 0, distort=False)
    outputs = [train_unit(encoded, seed, distort=True) for seed in range(6)]
    np.testing.assert_array_equal(outputs[0], train_unit(encoded, 0, distort=True))  # stateless: same seed, same
    assert len({o.tobytes() for o in outputs}) == 6  # another seed, another distortion
    for image in outputs:
        assert image.min() >= 0 and image.max() <= 1  # clipped into the pixel range
        assert np.abs(image - plain).max() > 0.02
        # Colour ops move values, not pixels: each block stays flat (inside, away from JPEG's edge ringing).
        for y in (0, 16):
            for x in (0, 16):
                block = image[y + 4:y + 12, x + 4:x + 12].reshape(-1, 3)
                assert np.ptp(block, axis=0).max() < 0.03, (y, x)


def test_colour_distortion_of_a_flat_grey_image_is_a_bounded_brightness_shift():
    """Saturation and hue leave grey alone and contrast leaves a flat image alone: only brightness,
    at most 32/255 (inception's max_delta), moves it, equally in every channel."""
    encoded = jpeg(np.full((32, 32, 3), 128))
    plain = train_unit(encoded, 0, distort=False)
    shifts = []
    for seed in range(8):
        image = train_unit(encoded, seed, distort=True)
        np.testing.assert_allclose(image, image[..., :1].repeat(3, axis=-1), atol=1e-6)
        shifts.append(float(np.mean(image - plain)))
    assert max(abs(s) for s in shifts) <= 32 / 255 + 1e-5
    assert max(shifts) - min(shifts) > 0.01


@pytest.mark.parametrize("name", ["resnet50_imagenet", "inception_v3_course"])
def test_recipe_files_load_as_train_configs_and_open_with_their_command(name):
    from hpcvision.config import load_config
    from hpcvision.train.config import TrainConfig

    path = ROOT / "configs" / f"{name}.yaml"
    text = path.read_text()
    command = next(line for line in text.splitlines() if line.startswith("#   hpcvision "))
    assert f"--config configs/{name}.yaml" in command
    config = load_config(TrainConfig, None, path)
    expected = {
        "resnet50_imagenet": dict(model="resnet50", optimizer="sgd", learning_rate=0.1, warmup_epochs=5,
                                  schedule="cosine", weight_decay=1e-4, label_smoothing=0.1, epochs=90),
        "inception_v3_course": dict(model="inception_v3", optimizer="rmsprop", momentum=0.9, aux_loss_weight=0.3,
                                    label_smoothing=0.1),
    }[name]
    assert {key: getattr(config, key) for key in expected} == expected
    if name == "inception_v3_course":
        assert config.input.color_distortion and config.input.area_range == (0.05, 1.0)
