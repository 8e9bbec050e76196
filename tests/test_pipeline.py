"""The tf.data input pipeline: shapes, labels, sharding, determinism, crops over boxes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from hpcvision.data import pipeline, presets  # noqa: E402
from hpcvision.data.input_config import InputConfig  # noqa: E402
from hpcvision.data.shards import read_manifest  # noqa: E402
from hpcvision.errors import UserError  # noqa: E402


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _example(encoded: bytes, label: int, boxes: list[tuple[float, float, float, float]]) -> bytes:
    """A record with the inception keys the pipeline reads; boxes are (xmin, ymin, xmax, ymax)."""
    floats = {k: [b[i] for b in boxes] for i, k in enumerate(("xmin", "ymin", "xmax", "ymax"))}
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        **{
            f"image/object/bbox/{k}": tf.train.Feature(float_list=tf.train.FloatList(value=v))
            for k, v in floats.items()
        },
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(out: Path, name: str, records: list[bytes], shards: int, label_offset: int = 1, classes: int = 0):
    """Round-robin records into `shards` TFRecord files plus a manifest, as `data build` lays them out."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in range(shards):
        file = f"{name}-{s:05d}-of-{shards:05d}"
        part = records[s::shards]
        with tf.io.TFRecordWriter(str(out / file)) as writer:
            for record in part:
                writer.write(record)
        entries.append({"file": file, "count": len(part)})
    manifest = {"num_examples": len(records), "shards": entries, "label_offset": label_offset, "num_classes": classes}
    (out / f"{name}-manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> Path:
    """13 records in 4 shards; record i has stored label i+1, so labels identify records."""
    rng = np.random.default_rng(0)
    records = [
        _example(_jpeg(rng.integers(0, 255, (40 + i, 50, 3))), i + 1, [(0.1, 0.2, 0.8, 0.9)] if i % 2 == 0 else [])
        for i in range(13)
    ]
    return write_shards(tmp_path_factory.mktemp("numbered"), "train", records, 4, classes=13)


def _labels(dataset) -> list[int]:
    return [int(v) for _, labels in dataset for v in labels.numpy()]


def test_eval_reads_every_record_once_with_zero_based_labels(numbered):
    dataset = pipeline.make_dataset(numbered, "train", training=False, batch_size=4, image_size=24)
    batches = list(dataset)
    assert [b[0].shape[0] for b in batches] == [4, 4, 4, 1]
    images, labels = batches[0]
    assert images.shape == (4, 24, 24, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32
    assert sorted(_labels(dataset)) == list(range(13))


def test_training_batches_are_full_and_repeat(numbered):
    dataset = pipeline.make_dataset(numbered, "train", training=True, batch_size=5, image_size=16, seed=1)
    batches = list(dataset.take(6))  # 30 images from 13 records: it must repeat
    assert all(b[0].shape == (5, 16, 16, 3) for b in batches)
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert labels.min() >= 0 and labels.max() <= 12 and len(set(labels)) == 13


@pytest.mark.parametrize("pipelines", [2, 3, 4, 6])
def test_workers_read_disjoint_sets_that_cover_all_records(numbered, pipelines):
    seen = []
    for worker in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=worker)
        dataset = pipeline.make_dataset(
            numbered, "train", training=False, batch_size=3, image_size=8, input_context=context
        )
        seen.append(_labels(dataset))
    flat = [label for worker in seen for label in worker]
    assert sorted(flat) == list(range(13)), seen  # 6 pipelines > 4 files: records sharded instead
    assert all(worker for worker in seen)


def test_global_batch_is_split_per_replica(numbered):
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    dataset = pipeline.make_dataset(
        numbered, "train", training=True, batch_size=99, global_batch_size=8, image_size=8, input_context=context
    )
    assert next(iter(dataset))[0].shape[0] == 4


def _take(dataset, n):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(n)]


@pytest.mark.parametrize("augment", ["inception", "pad_crop"])
def test_same_seed_same_batches(numbered, augment):
    def batches(seed):
        return _take(
            pipeline.make_dataset(
                numbered, "train", InputConfig(augment=augment), training=True, batch_size=4, image_size=16, seed=seed
            ),
            5,
        )

    first, again, other = batches(3), batches(3), batches(4)
    for (a_img, a_lab), (b_img, b_lab) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a_lab, b_lab)
        np.testing.assert_array_equal(a_img, b_img)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def _corner_box_records(n: int) -> list[bytes]:
    """A black 64x64 image with a white 16x16 square in the top-left corner, boxed."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[:16, :16] = 255
    return [_example(_jpeg(image), 1, [(0.0, 0.0, 0.25, 0.25)])] * n


def _top_left_pixels(data: Path, **kwargs) -> np.ndarray:
    config = InputConfig(flip=False, normalize="unit", **kwargs)
    dataset = pipeline.make_dataset(data, "train", config, training=True, batch_size=32, image_size=32, seed=5)
    images = next(iter(dataset))[0].numpy()
    return images[:, 1, 1].mean(axis=-1)


def test_crops_cover_the_box_when_asked(tmp_path):
    data = write_shards(tmp_path, "train", _corner_box_records(32), 1, classes=1)
    covered = _top_left_pixels(data, min_object_covered=1.0, area_range=(0.05, 1.0))
    assert (covered > 0.9).all(), covered
    # Control: small crops that need not cover the box mostly miss the corner.
    free = _top_left_pixels(data, min_object_covered=0.0, area_range=(0.05, 0.1))
    assert (free < 0.1).sum() > 16, free


def test_tiny_images_keep_a_minimum_crop_size():
    encoded = tf.constant(_jpeg(np.full((28, 28, 3), 128)))
    for s in range(20):
        window = presets.inception_window(encoded, tf.zeros([0, 4]), tf.constant([s, 0]), InputConfig(
            area_range=(0.01, 0.02), aspect_ratio_range=(0.75, 1.33), min_object_covered=0.0, min_crop_size=12,
        )).numpy()
        assert window[2] >= 12 and window[3] >= 12 and (window[:2] + window[2:] <= 28).all(), window


def test_imagenet_normalisation_matches_numpy(tmp_path):
    gray = np.full((20, 30, 3), (200, 100, 50), np.uint8)
    data = write_shards(tmp_path, "validation", [_example(_jpeg(gray), 1, [])], 1, classes=1)
    dataset = pipeline.make_dataset(data, "validation", training=False, batch_size=1, image_size=10)
    image = next(iter(dataset))[0].numpy()[0]
    expected = (np.array([200, 100, 50]) / 255 - np.array(presets.IMAGENET_MEAN)) / np.array(presets.IMAGENET_STD)
    np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), expected, atol=0.05)


def test_label_offset_override(numbered):
    dataset = pipeline.make_dataset(numbered, "train", training=False, batch_size=13, image_size=8, label_offset=0)
    assert sorted(_labels(dataset)) == list(range(1, 14))


def test_synthetic_needs_no_files():
    dataset = pipeline.synthetic_dataset(6, 12, 5)
    images, labels = next(iter(dataset))
    assert images.shape == (6, 12, 12, 3) and labels.dtype == tf.int32
    assert ((labels.numpy() >= 0) & (labels.numpy() < 5)).all()


def test_sample_batch_with_boxes(numbered):
    images, boxes, labels = pipeline.sample_batch_with_boxes(numbered, "train", 13, 20)
    assert images.shape == (13, 20, 20, 3) and images.dtype == tf.uint8
    assert labels == [1, 5, 9, 13, 2, 6, 10, 3, 7, 11, 4, 8, 12]  # as stored, shard by shard
    assert boxes.shape[0] == 13 and boxes.shape[2] == 4
    # Shard 0 holds records 0, 4, 8, 12 (boxed), then shard 1 starts with record 1 (no box).
    np.testing.assert_allclose(boxes.numpy()[1, 0], [0.2, 0.1, 0.9, 0.8], atol=1e-6)  # ymin, xmin, ymax, xmax
    np.testing.assert_allclose(boxes.numpy()[4, 0], [0.0, 0.0, 1.0, 1.0])


def test_missing_manifest_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="validation-manifest.json"):
        pipeline.make_dataset(tmp_path, "validation", training=False, batch_size=2, image_size=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The real path: `data sample --source synthetic` then `data build` (4 train shards)."""
    from hpcvision.cli import main

    root = tmp_path_factory.mktemp("built")
    src, rec = root / "src", root / "rec"
    assert main(["data", "sample", "--source", "synthetic", "--per-class", "6", str(src)]) == 0
    assert main([
        "data", "build", "--images", str(src / "Images.tar"), "--annotations", str(src / "Annotation.tar.gz"),
        "--list", str(src / "train_files.txt"), "--synsets", str(src / "synsets.txt"),
        "--metadata", str(src / "metadata.txt"), "--out", str(rec), "--name", "train", "--shards", "4",
    ]) == 0
    return rec


def test_reads_what_data_build_writes(built):
    manifest = read_manifest(built, "train")
    dataset = pipeline.make_dataset(built, "train", training=False, batch_size=16, image_size=32)
    labels = _labels(dataset)
    assert len(labels) == manifest["num_examples"] == 60
    assert sorted(set(labels)) == list(range(manifest["num_classes"]))  # 0-based: stored label - 1
    assert all(labels.count(c) == 6 for c in set(labels))
    for augment in ("inception", "pad_crop"):
        images, batch_labels = next(iter(pipeline.make_dataset(
            built, "train", InputConfig(augment=augment), training=True, batch_size=8, image_size=28, seed=0
        )))
        assert images.shape == (8, 28, 28, 3) and np.isfinite(images.numpy()).all()
        assert batch_labels.numpy().max() < manifest["num_classes"]


def test_benchmark_quick_runs(tmp_path, run_benchmark):
    code, stdout, stderr = run_benchmark("input_pipeline", "--quick", "--cache-dir", tmp_path)
    assert code == 0, stderr[-2000:]
    for reference in ("limit", "(limit + resize)", "(limit + resize + flip + normalise)"):
        assert f"ratio pipeline/{reference}:" in stdout, stdout
    assert list(tmp_path.glob("hpcvision-bench-input-*/train-manifest.json"))  # cached where asked


def test_batched_parse_keeps_each_records_own_boxes(tmp_path):
    boxes = [[], [(0.1, 0.2, 0.3, 0.4)], [(0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 0.6, 0.7)], []]
    records = [_example(_jpeg(np.zeros((8, 8, 3))), i + 1, b) for i, b in enumerate(boxes)]
    data = write_shards(tmp_path, "train", records, 1, classes=4)
    path = read_manifest(data, "train")["shards"][0]["path"]
    batched = tf.data.TFRecordDataset(path).batch(3).map(pipeline.parse_records).unbatch()
    for features, expected in zip(batched, boxes, strict=True):
        got = pipeline.record_boxes(features).numpy()
        want = np.array([(ymin, xmin, ymax, xmax) for xmin, ymin, xmax, ymax in expected]).reshape(-1, 4)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_bad_options_are_user_errors(numbered):
    with pytest.raises(UserError, match="'augment' must be one of inception, pad_crop, none"):
        pipeline.make_dataset(numbered, "train", InputConfig(augment="random"), training=True, batch_size=2,
                              image_size=8)
    with pytest.raises(UserError, match="'normalize' must be one of imagenet, unit"):
        InputConfig(normalize="z-score")
    with pytest.raises(UserError, match="'area_range' takes two numbers"):
        InputConfig(area_range=[0.1, 0.5, 1.0])


def test_derived_options_have_one_rule():
    assert InputConfig().pad_pixels(28) == 3 and InputConfig().pad_pixels(4) == 1
    assert InputConfig(pad=0).pad_pixels(28) == 0
    assert InputConfig().eval_central_fraction() == 0.875
    assert InputConfig(augment="pad_crop").eval_central_fraction() == 1.0
    assert InputConfig(augment="none").eval_central_fraction() == 1.0
    assert InputConfig(augment="none", central_fraction=0.5).eval_central_fraction() == 0.5


@pytest.mark.parametrize("augment", ["inception", "none"])
def test_serving_preprocesses_a_jpeg_as_evaluation_does(augment):
    encoded = tf.constant(_jpeg(np.random.default_rng(3).integers(0, 255, (37, 52, 3))))
    config = InputConfig(augment=augment, normalize="unit")
    served = presets.preprocess_for_eval(encoded, 20, normalize="unit", central_fraction=config.eval_central_fraction())
    np.testing.assert_array_equal(served.numpy(), presets.eval_image(encoded, 20, config).numpy())
