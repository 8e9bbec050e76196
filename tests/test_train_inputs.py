"""The training input of a whole run: epoch after epoch in one dataset, and resumable at any step."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_records import write_split

tf = pytest.importorskip("tensorflow")

from hpcvision.data.input_config import InputConfig  # noqa: E402
from hpcvision.data.pipeline import make_dataset  # noqa: E402
from hpcvision.train.config import TrainConfig  # noqa: E402
from hpcvision.train.inputs import train_dataset_fn  # noqa: E402

BATCH, SIZE, SEED = 4, 16, 7


def _jpeg(rng: np.random.Generator) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """14 records in 2 shards, labels 0..13 (labels name the records): 3 batches of 4 per epoch."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("inputs")
    classes = [{"wnid": f"n{i:08d}", "text": f"class {i}"} for i in range(14)]
    write_split(out, "train", [(_jpeg(rng), i, 24, 24) for i in range(14)], classes, shards=2)
    return out


def _config(data: Path) -> TrainConfig:
    return TrainConfig(data=str(data), batch_size=BATCH, seed=SEED, input=InputConfig(augment="pad_crop", pad=2))


def _epochs_as_separate_pipelines(data: Path, epochs: int, steps_per_epoch: int) -> list:
    """The reference: epoch e is the first `steps_per_epoch` batches of a pipeline seeded SEED + e."""
    batches = []
    for epoch in range(epochs):
        dataset = make_dataset(data, "train", _config(data).input, training=True, batch_size=BATCH, image_size=SIZE,
                               seed=SEED + epoch, repeat=True)
        batches += [(images.numpy(), labels.numpy()) for images, labels in dataset.take(steps_per_epoch)]
    return batches


def _run_from(data: Path, first_step: int, count: int, steps_per_epoch: int) -> list:
    dataset = train_dataset_fn(_config(data), SIZE, 14, steps_per_epoch=steps_per_epoch,
                               first_step=first_step, last_step=count + first_step)(None)
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(count)]


def test_one_dataset_gives_each_epoch_its_own_order_and_resumes_at_any_step(data):
    steps_per_epoch, epochs = 3, 3
    expected = _epochs_as_separate_pipelines(data, epochs, steps_per_epoch)
    assert not np.array_equal(expected[0][1], expected[steps_per_epoch][1])  # the epochs differ
    total = epochs * steps_per_epoch
    for first_step in (0, 2, 3, 4):  # from the start, before, at and after an epoch boundary
        got = _run_from(data, first_step, total - first_step, steps_per_epoch)
        assert len(got) == total - first_step
        for (want_images, want_labels), (images, labels) in zip(expected[first_step:], got, strict=True):
            np.testing.assert_array_equal(labels, want_labels)
            np.testing.assert_array_equal(images, want_images)
