"""`hpcvision data verify`: a clean build passes; corruption is named by shard and record index."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A synthetic sample built into 3 shards (made once; tests corrupt copies)."""
    from hpcvision.cli import main

    root = tmp_path_factory.mktemp("verify")
    assert main(["data", "sample", "--source", "synthetic", "--per-class", "4", "--workers", "1",
                 str(root / "sample")]) == 0
    s = root / "sample"
    assert main(["data", "build", "--images", str(s / "Images.tar"), "--annotations", str(s / "Annotation.tar.gz"),
                 "--list", str(s / "train_files.txt"), "--synsets", str(s / "synsets.txt"),
                 "--metadata", str(s / "metadata.txt"), "--out", str(root / "rec"), "--shards", "3"]) == 0
    return root / "rec"


@pytest.fixture
def copy(built, tmp_path) -> Path:
    target = tmp_path / "rec"
    shutil.copytree(built, target)
    return target


def _record_spans(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte range of each framed record, from the length fields alone."""
    data, spans, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        spans.append((pos, pos + 16 + length))
        pos += 16 + length
    return spans


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_clean_build_verifies(run_cli, built):
    code, stdout, _ = run_cli("data", "verify", built, "--decode")
    assert code == 0
    assert "verified 40 records in 3 shards" in stdout


@pytest.mark.parametrize("where", ["payload", "length"])
def test_flipped_byte_names_shard_and_record(run_cli, copy, where):
    shard = copy / "train-00001-of-00003"
    spans = _record_spans(shard)
    index = len(spans) // 2
    start, end = spans[index]
    _flip(shard, start + 2 if where == "length" else (start + end) // 2)
    code, _, stderr = run_cli("data", "verify", copy)
    assert code == 2
    assert stderr.strip() == f"hpcvision: error: {shard}: record {index}: " + \
        ("length CRC mismatch" if where == "length" else "data CRC mismatch")


def test_truncated_shard_is_named(run_cli, copy):
    shard = copy / "train-00002-of-00003"
    spans = _record_spans(shard)
    shard.write_bytes(shard.read_bytes()[: spans[-1][0] + 20])
    code, _, stderr = run_cli("data", "verify", copy)
    assert code == 2 and f"{shard}: record {len(spans) - 1}: truncated" in stderr


def test_count_mismatch_with_manifest(run_cli, copy):
    path = copy / "train-manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["count"] += 1
    path.write_text(json.dumps(manifest))
    code, _, stderr = run_cli("data", "verify", copy)
    assert code == 2 and manifest["shards"][0]["file"] in stderr and "manifest says" in stderr


def test_valid_crc_but_not_our_schema(run_cli, copy):
    """Records with intact framing whose content is wrong: caught by parsing, named by index."""
    from hpcvision.data.records import RecordWriter, encode_example, read_records

    shard = copy / "train-00000-of-00003"
    original = list(read_records(shard))
    good = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(good, "JPEG")
    bad = [
        (b"\x0a\x05garbage", "not a tf.train.Example"),
        (encode_example(encoded=good.getvalue(), filename="x.JPEG", height=8, width=8, label=99,
                        synset="n03595614", text="x"), "label 99 not in the manifest"),
        (encode_example(encoded=good.getvalue()[:40], filename="x.JPEG", height=8, width=8, label=1,
                        synset="n03595614", text="jersey, T-shirt, tee shirt"), "JPEG does not decode"),
    ]
    for payload, message in bad:
        records = list(original)
        records[2] = payload
        with RecordWriter(shard) as writer:
            for r in records:
                writer.write(r)
        code, _, stderr = run_cli("data", "verify", copy, "--decode")
        assert code == 2 and f"{shard}: record 2: " in stderr and message in stderr, stderr


def test_missing_manifest_or_shard(run_cli, copy, tmp_path):
    code, _, stderr = run_cli("data", "verify", copy, "--name", "validation")
    assert code == 2 and "validation-manifest.json" in stderr
    (copy / "train-00001-of-00003").unlink()
    code, _, stderr = run_cli("data", "verify", copy)
    assert code == 2 and "train-00001-of-00003" in stderr and "missing" in stderr


@pytest.mark.parametrize("manifest, message", [
    ([1], "not a JSON object"),
    ({"shards": 3, "num_examples": 1, "labels": []}, "'shards' is not a list"),
    ({"shards": [{"file": "a"}], "num_examples": 0, "labels": []}, "'shards' is not a list"),
    ({"shards": [], "num_examples": 0, "labels": [{"wnid": "n1"}]}, "'labels' is not a list"),
])
def test_malformed_manifest_is_one_line_error(run_cli, tmp_path, manifest, message):
    (tmp_path / "train-manifest.json").write_text(json.dumps(manifest))
    code, _, stderr = run_cli("data", "verify", tmp_path)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def _garbage_scan_jpeg() -> bytes:
    """A JPEG with valid markers around a garbage scan that Pillow decodes and TensorFlow refuses."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")
    start, end = sos + 2 + int.from_bytes(data[sos + 2: sos + 4], "big"), data.rindex(b"\xff\xd9")
    for seed in range(200):
        scan = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
        candidate = data[:start] + scan + data[end:]
        try:
            Image.open(io.BytesIO(candidate)).load()
            tf.io.decode_jpeg(candidate, channels=3)
        except tf.errors.InvalidArgumentError:
            return candidate
        except Exception:  # Pillow refuses it too: not the case wanted
            continue
    raise AssertionError("no garbage scan that only TensorFlow refuses")


def test_decode_catches_a_garbage_scan_as_training_would(run_cli, copy):
    from hpcvision.data.records import RecordWriter, encode_example, read_records

    shard = copy / "train-00001-of-00003"
    records = list(read_records(shard))
    records[1] = encode_example(encoded=_garbage_scan_jpeg(), filename="x.JPEG", height=32, width=40, label=1,
                                synset="n03595614", text="jersey, T-shirt, tee shirt")
    with RecordWriter(shard) as writer:
        for record in records:
            writer.write(record)
    assert run_cli("data", "verify", copy)[0] == 0  # framing and schema are fine
    code, _, stderr = run_cli("data", "verify", copy, "--decode")
    assert code == 2
    assert stderr.strip() == (f"hpcvision: error: {shard}: record 1: JPEG does not decode "
                              "(jpeg::Uncompress failed. Invalid JPEG data or crop window.)")
