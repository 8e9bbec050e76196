"""One bad record must not stop train/evaluate, a corrupt shard is named, a huge image is refused unread.

Bad records are written straight with hpcvision.data.records (build would refuse them): a progressive
JPEG whose scan is random bytes between valid markers, and a JPEG whose header claims 65,000 x 65,000 px.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import train_records
from PIL import Image

NUM_CLASSES = 2
SIZE = 28  # the `small` model's size


def _jpeg(seed: int, **options) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", **options)
    return out.getvalue()


def garbage_scan_jpeg() -> bytes:
    """SOI, tables, SOF, SOS header and EOI intact; the entropy-coded scan replaced by random bytes."""
    data = _jpeg(0, progressive=True)
    sos = data.index(b"\xff\xda")
    start, end = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big"), data.rindex(b"\xff\xd9")
    return data[:start] + np.random.default_rng(2).integers(0, 256, end - start, dtype=np.uint8).tobytes() + data[end:]


def huge_header_jpeg() -> bytes:
    """A small JPEG whose frame header claims 65,000 x 65,000 pixels."""
    data = _jpeg(1)
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", 65000, 65000) + data[sof + 9:]


def write_split(out: Path, name: str, encoded: list[bytes], shards: int = 2) -> None:
    """Shards of `encoded` (labels alternate) and a manifest counting every record, bad ones too."""
    classes = [{"wnid": f"n0{c}", "text": "thing"} for c in range(NUM_CLASSES)]
    train_records.write_split(out, name, [(jpeg, i % NUM_CLASSES, SIZE, SIZE) for i, jpeg in enumerate(encoded)],
                              classes, shards)


def flip_byte_in_second_record(shard: Path) -> None:
    """Flip a byte inside the payload of the shard's second record."""
    data = bytearray(shard.read_bytes())
    (first_length,) = struct.unpack("<Q", data[:8])
    second = 16 + first_length
    data[second + 12 + 40] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    """train: 2 bad + 8 good records; validation: 2 bad + 10 good (the bad ones first, in shard 0)."""
    root = tmp_path_factory.mktemp("bad_records") / "rec"
    root.mkdir()
    bad = [garbage_scan_jpeg(), huge_header_jpeg()]
    write_split(root, "train", [bad[0], bad[1], *(_jpeg(10 + i) for i in range(8))], shards=1)
    write_split(root, "validation", [bad[0], _jpeg(30), bad[1], *(_jpeg(31 + i) for i in range(9))])
    return root


def train_args(data: Path, checkpoint_dir: Path, steps: int = 4) -> list:
    return ["train", "--data", data, "--model", "small", "--image-size", SIZE, "--batch-size", "4", "--steps", steps,
            "--checkpoint-dir", checkpoint_dir, "--label-smoothing", "0", "--log-every", "1"]


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    """train: 8 records in one shard; validation: 6 in two; all decode."""
    root = tmp_path_factory.mktemp("good_records")
    write_split(root, "train", [_jpeg(50 + i) for i in range(8)], shards=1)
    write_split(root, "validation", [_jpeg(60 + i) for i in range(6)])
    return root


@pytest.fixture(scope="module")
def trained(good_data, tmp_path_factory):
    """A checkpoint folder of 2 steps on the good records (so the tests below depend on nothing else)."""
    from hpcvision.cli import main

    checkpoint_dir = tmp_path_factory.mktemp("good_records_run")
    assert main([str(a) for a in train_args(good_data, checkpoint_dir, steps=2)]) == 0
    return None, checkpoint_dir


def test_train_skips_records_that_do_not_decode(run_cli, bad_data, tmp_path, caplog):
    # 2 steps of 4 = one pass over the train split (its 8 good records); then the final evaluation on
    # validation, which counts the 2 it skipped as evaluate does.
    caplog.set_level(logging.WARNING, logger="hpcvision")
    code, _out, err = run_cli(*train_args(bad_data, tmp_path, steps=2))
    assert code == 0, err
    assert (tmp_path / "ckpt-2.index").is_file()
    (warning,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "2 of 12 records skipped" in warning and "--name validation --decode" in warning


def test_evaluate_skips_counts_and_points_to_verify(run_cli, trained, bad_data, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hpcvision")
    code, out, err = run_cli("evaluate", "--checkpoint-dir", trained[1], "--data", bad_data, "--out", tmp_path / "m")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["num_examples"] == 10 and metrics["skipped_records"] == 2
    assert "(10 images, 2 skipped" in out
    (warning,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "2 of 12 records skipped" in warning
    assert f"hpcvision data verify {bad_data} --name validation --decode" in warning


def test_a_corrupt_shard_is_named_in_one_line_by_evaluate(run_cli, trained, good_data, tmp_path):
    data = tmp_path / "rec"
    shutil.copytree(good_data, data)
    shard = data / "validation-00001-of-00002"
    flip_byte_in_second_record(shard)
    code, _out, err = run_cli("evaluate", "--checkpoint-dir", trained[1], "--data", data, "--out", tmp_path / "m")
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("hpcvision: error:")]
    assert line == (f"hpcvision: error: {shard}: record 1: data CRC mismatch; check the split "
                    f"with: hpcvision data verify {data} --name validation")
    assert not (tmp_path / "m" / "metrics.json").exists()


def test_a_corrupt_shard_is_named_in_one_line_by_train(run_cli, good_data, tmp_path):
    data = tmp_path / "rec"
    shutil.copytree(good_data, data)
    shard = data / "train-00000-of-00001"
    flip_byte_in_second_record(shard)
    code, _out, err = run_cli(*train_args(data, tmp_path / "run", steps=2))
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("hpcvision: error:")]
    assert line == (f"hpcvision: error: {shard}: record 1: data CRC mismatch; check the split with: "
                    f"hpcvision data verify {data} --name train")


def test_a_corrupt_shard_in_val_data_is_named_by_train(run_cli, good_data, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(good_data, val)
    shard = val / "validation-00001-of-00002"
    flip_byte_in_second_record(shard)
    code, _out, err = run_cli(*train_args(good_data, tmp_path / "run", steps=2), "--val-data", val)
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("hpcvision: error:")]
    assert line == (f"hpcvision: error: {shard}: record 1: data CRC mismatch; check the split with: "
                    f"hpcvision data verify {val} --name validation")


def test_evaluate_into_a_read_only_checkpoint_folder_writes_nothing(run_cli, trained, good_data, tmp_path,
                                                                    monkeypatch):
    import tensorflow as tf

    log_dir = trained[1] / "logs" / "eval"

    def read_only(logdir, *args, **kwargs):  # what TensorFlow raises there (we run as root: chmod cannot)
        raise tf.errors.PermissionDeniedError(None, None, f"{logdir}; Read-only file system")

    monkeypatch.setattr(tf.summary, "create_file_writer", read_only)
    code, _out, err = run_cli("evaluate", "--checkpoint-dir", trained[1], "--data", good_data, "--out", tmp_path / "m")
    assert code == 2
    assert err.strip().splitlines()[-1] == f"hpcvision: error: {log_dir}; Read-only file system"
    assert list((tmp_path / "m").iterdir()) == []


def png_claiming(width: int, height: int) -> bytes:
    """An 8 x 8 PNG whose IHDR says width x height (CRC fixed, image data unchanged)."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 20, 200)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


@pytest.mark.parametrize(("width", "height", "says"), [
    (20_000, 20_000, "400,000,000 pixels"),  # past Pillow's own bomb limit: it refuses to open it
    (12_000, 9_000, "12000x9000"),  # under Pillow's limit, over ours
])
def test_predict_refuses_an_image_over_the_pixel_limit_unread(run_cli, trained, tmp_path, width, height, says):
    huge, good = tmp_path / "huge.png", tmp_path / "good.jpg"
    huge.write_bytes(png_claiming(width, height))
    good.write_bytes(_jpeg(5))
    code, out, err = run_cli("predict", "--checkpoint-dir", trained[1], huge, good)
    assert code == 1  # predict's contract: the others are predicted, exit 1 if any image could not be
    assert str(good) in out and str(huge) not in out
    (line,) = [line for line in err.splitlines() if str(huge) in line]
    assert line == f"hpcvision: error: {huge}: too large: {says} is more than 100,000,000 pixels; not decoded"
