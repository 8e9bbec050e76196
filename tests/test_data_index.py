"""`hpcvision data index`: TFRecords another tool wrote (no manifest) become a split train, evaluate, verify read."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image


def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (value, 255 - value, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_foreign(folder: Path, name: str, labels: list[int], shards: int, *, inception: bool = False,
                  drop: str | None = None) -> None:
    """Shards `<name>-0000i-of-0000n` written with tf.train.Example, as another tool would, and no manifest:
    only image/encoded + image/class/label, or (inception) with synset, text and size too."""
    import tensorflow as tf

    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tf.io.TFRecordWriter(str(folder / f"{name}-{s:05d}-of-{shards:05d}")) as writer:
            for i in range(s, len(labels), shards):
                keys = {"image/encoded": jpeg(20 * labels[i]), "image/class/label": labels[i]}
                if inception:
                    keys.update({"image/class/synset": f"n{labels[i]:08d}".encode(), "image/height": 12,
                                 "image/width": 16, "image/class/text": f"class {labels[i]}".encode()})
                keys.pop(drop, None)
                example = tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in keys.items()}))
                writer.write(example.SerializeToString())


def test_inception_records_are_indexed_and_verified(run_cli, tmp_path):
    write_foreign(tmp_path, "train", [1, 2, 3, 1, 2, 3, 3], 2, inception=True)
    code, stdout, stderr = run_cli("data", "index", tmp_path, "--name", "train")
    assert code == 0, stderr
    manifest = json.loads((tmp_path / "train-manifest.json").read_text())
    assert manifest["indexed"] is True and manifest["pattern"] == "train-*-of-*"
    assert manifest["label_offset"] == 1 and manifest["num_classes"] == 3 and manifest["num_examples"] == 7
    assert [s["count"] for s in manifest["shards"]] == [4, 3]
    assert manifest["labels"][2] == {"label": 3, "wnid": "n00000003", "text": "class 3"}
    code, stdout, stderr = run_cli("data", "verify", tmp_path, "--decode")
    assert code == 0 and "verified 7 records" in stdout, stderr


def test_minimal_records_are_zero_based_and_verify_lists_absent_keys(run_cli, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hpcvision.data.verify")
    write_foreign(tmp_path, "validation", [0, 1, 2, 2], 1)
    assert run_cli("data", "index", tmp_path, "--name", "validation")[0] == 0
    manifest = json.loads((tmp_path / "validation-manifest.json").read_text())
    assert manifest["label_offset"] == 0 and manifest["num_classes"] == 3
    assert manifest["labels"][0] == {"label": 0, "wnid": "", "text": ""}
    code, stdout, stderr = run_cli("data", "verify", tmp_path, "--name", "validation", "--decode")
    assert code == 0 and "verified 4 records" in stdout, stderr
    assert "image/class/synset" in caplog.text and "image/object/bbox/xmin" in caplog.text
    code, _, stderr = run_cli("data", "index", tmp_path, "--name", "validation", "--label-offset", "1")
    assert code == 2 and "label 0 is below --label-offset 1" in stderr


def test_pattern_and_pipeline_read_indexed_labels(run_cli, tmp_path):
    from hpcvision.data.pipeline import make_dataset

    write_foreign(tmp_path, "val.tfrecord", [0, 1, 1], 1)
    (tmp_path / "val.tfrecord-00000-of-00001").rename(tmp_path / "part-0.tfrecord")
    assert run_cli("data", "index", tmp_path, "--name", "validation", "--pattern", "part-*.tfrecord")[0] == 0
    batch = next(iter(make_dataset(tmp_path, "validation", training=False, batch_size=3, image_size=8)))
    assert batch[1].numpy().tolist() == [0, 1, 1]


def test_refusals_are_one_line(run_cli, tmp_path):
    code, _, stderr = run_cli("data", "index", tmp_path, "--name", "train")
    assert code == 2 and "no files match 'train-*-of-*'" in stderr and len(stderr.strip().splitlines()) == 1
    write_foreign(tmp_path, "train", [1, 2, 3], 1, drop="image/class/label")
    code, _, stderr = run_cli("data", "index", tmp_path, "--name", "train")
    assert code == 2 and "train-00000-of-00001: record 0: no image/class/label" in stderr
    assert not (tmp_path / "train-manifest.json").exists()


def test_no_manifest_names_the_index_command(run_cli, tmp_path):
    from hpcvision.errors import UserError
    from hpcvision.train.config import TrainConfig
    from hpcvision.train.inputs import describe_data

    write_foreign(tmp_path, "train", [1], 1)
    code, _, stderr = run_cli("data", "verify", tmp_path)
    assert code == 2 and f"hpcvision data index {tmp_path} --name train" in stderr, stderr
    with pytest.raises(UserError, match=f"hpcvision data index {tmp_path} --name train"):
        describe_data(TrainConfig(data=str(tmp_path)))
