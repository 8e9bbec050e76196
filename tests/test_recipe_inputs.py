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


def batch(n: int = 8, size: int = 16, classes: int = 10, seed: int = 0):
    """n random images 0..255 with distinct labels 0..n-1."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32), np.arange(n, dtype=np.int32) % classes


def test_mixup_mixes_each_image_with_one_partner_as_its_label_says():
    from hpcvision.data.batch_augment import batch_augmenter
    from hpcvision.data.input_config import InputConfig

    images, labels = batch()
    augment = batch_augmenter(InputConfig(mixup_alpha=1.0, normalize="unit"), 10, seed=7)
    mixed, targets = (np.asarray(t) for t in augment(images, labels))
    assert targets.shape == (8, 10)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    for i in range(8):
        # Labels are distinct, so the target names the partner j and the weight w: w x_i + (1 - w) x_j.
        weight = targets[i, labels[i]]
        others = [j for j in np.flatnonzero(targets[i] > 1e-6) if j != labels[i]]
        partner = others[0] if others else i
        expected = (weight * images[i] + (1 - weight) * images[partner]) / 255.0 if others else images[i] / 255.0
        np.testing.assert_allclose(mixed[i], expected, atol=1e-4)


def test_cutmix_pastes_a_patch_whose_area_is_the_partners_label_weight():
    from hpcvision.data.batch_augment import batch_augmenter
    from hpcvision.data.input_config import InputConfig

    images, labels = batch()
    augment = batch_augmenter(InputConfig(cutmix_alpha=1.0, normalize="unit"), 10, seed=3)
    mixed, targets = (np.asarray(t) for t in augment(images, labels))
    pasted_any = False
    for i in range(8):
        own = np.all(np.isclose(mixed[i], images[i] / 255.0, atol=1e-5), axis=-1)
        partner_weight = 1.0 - targets[i, labels[i]]
        assert (1 - own.mean()) == pytest.approx(partner_weight, abs=2 / 16)  # area, to a pixel row's rounding
        pasted_any |= partner_weight > 0.05
    assert pasted_any


def test_randaugment_and_erasing_change_images_but_not_labels():
    from hpcvision.data.batch_augment import batch_augmenter
    from hpcvision.data.input_config import InputConfig

    images, labels = batch()
    augment = batch_augmenter(InputConfig(randaugment_ops=2, random_erasing=1.0, normalize="unit"), 10, seed=1)
    out, same_labels = (np.asarray(t) for t in augment(images, labels))
    np.testing.assert_array_equal(same_labels, labels)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    changed = [not np.allclose(out[i], images[i] / 255.0, atol=1e-3) for i in range(8)]
    assert all(changed)
    assert batch_augmenter(InputConfig(), 10, seed=1) is None  # nothing on: the pipeline is as before


def test_training_with_the_whole_recipe_runs_and_evaluates(run_cli, tmp_path, records):
    code, _out, err = run_cli(
        "train", "--data", records, "--model", "small", "--image-size", "32", "--batch-size", "10", "--steps", "6",
        "--augment", "inception", "--color-distortion", "--randaugment-ops", "2", "--random-erasing", "0.25",
        "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--optimizer", "adamw", "--ema-decay", "0.9",
        "--clip-norm", "1", "--accumulate", "2", "--checkpoint-dir", tmp_path / "run", "--log-every", "3")
    assert code == 0, err
    assert (tmp_path / "run" / "ckpt-6.index").is_file()


def test_eval_image_size_is_what_evaluation_and_serving_use(run_cli, caplog, records, tmp_path):
    import logging
    import re

    import tensorflow as tf

    from hpcvision.data.pipeline import make_dataset
    from hpcvision.infer.predict import from_checkpoint
    from hpcvision.train.checkpoint import load_trained_model

    caplog.set_level(logging.INFO, logger="hpcvision")
    code, _out, err = run_cli("train", "--data", records, "--model", "small", "--image-size", "32",
                              "--eval-image-size", "40", "--batch-size", "20", "--steps", "4", "--augment", "none",
                              "--label-smoothing", "0", "--checkpoint-dir", tmp_path, "--log-every", "2")
    assert code == 0, err
    logged = [float(x) for x in re.findall(r"eval step 4: loss (\S+)", "\n".join(r.getMessage() for r in caplog.records))]
    model, config, _labels = load_trained_model(tmp_path)
    assert model.inputs[0].shape[1] == 40 and config.image_size == 32
    assert from_checkpoint(tmp_path).image_size == 40
    # The loop evaluated the trained weights at 40 px: its loss, recomputed from the loaded model.
    dataset = make_dataset(records, "validation", config.input, training=False, batch_size=50, image_size=40)
    losses = [tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(images)) for images, labels in dataset]
    assert logged == [pytest.approx(float(tf.reduce_mean(tf.concat(losses, 0))), rel=1e-4)]
