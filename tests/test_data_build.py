"""`hpcvision data build`: schema read back by TensorFlow, bad inputs, determinism, resume, ranks."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from data_archives import DEAD_PID, sample_images, write_annotations_tgz, write_images_tar
from PIL import Image

from hpcvision.files import temporary_path

WNIDS = ["n01440764", "n01443537", "n01484850"]
WORDS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
         "n01484850": "great white shark"}


def _jpeg(seed: int, size=(48, 36), mode="RGB", fmt="JPEG") -> bytes:
    y, x = np.mgrid[0: size[1], 0: size[0]]
    base = np.stack([(x * 5 + seed * 40) % 256, (y * 7 + seed * 13) % 256, (x + y + seed) % 256, x % 256], -1)
    channels = len(Image.new(mode, (1, 1)).getbands())
    array = base[..., :channels].astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def _voc(box, size=(48, 36)) -> bytes:
    return (f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size><object><name>x</name>"
            f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
            f"</bndbox></object></annotation>").encode()


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Dataset:
    """A small Images.tar / Annotation.tar.gz (and the same as folders) with every bad input of the issue."""

    def __init__(self, root: Path, good_per_class: int = 6):
        self.root = root
        self.images: dict[str, dict[str, bytes]] = {w: {} for w in WNIDS}
        self.xml: dict[str, dict[str, bytes]] = {w: {} for w in WNIDS}
        self.boxes: dict[str, tuple] = {}  # name -> expected relative box (xmin, ymin, xmax, ymax)
        for k, wnid in enumerate(WNIDS):
            for i in range(good_per_class):
                name = f"{wnid}_{i}"
                self.images[wnid][name] = _jpeg(k * 100 + i)
                if i % 2 == 0:  # half have boxes
                    self.xml[wnid][name] = _voc((12, 9, 36, 27))
                    self.boxes[name] = (0.25, 0.25, 0.75, 0.75)
        w0, w1, w2 = WNIDS
        self.images[w0][f"{w0}_cmyk"] = _jpeg(1, mode="CMYK")
        self.images[w0][f"{w0}_gray"] = _jpeg(2, mode="L")
        self.images[w1][f"{w1}_png"] = _jpeg(3, mode="RGB", fmt="PNG")
        good = _jpeg(4, size=(200, 150))
        self.images[w1][f"{w1}_corrupt"] = good[: len(good) // 2]
        self.images[w2][f"{w2}_empty"] = b""
        self.images[w2][f"{w2}_badxml"] = _jpeg(5)
        self.xml[w2][f"{w2}_badxml"] = b"<annotation><object><bndbox><xmin>3"
        self.images[w2][f"{w2}_outside"] = _jpeg(6)
        self.xml[w2][f"{w2}_outside"] = _voc((-10, 18, 60, 50))
        self.boxes[f"{w2}_outside"] = (0.0, 0.5, 1.0, 1.0)
        self.converted = {f"{w0}_cmyk", f"{w0}_gray", f"{w1}_png"}
        self.bad = {f"{w1}_corrupt": "corrupt", f"{w2}_empty": "zero-byte", f"{w2}_absent": "not in archive"}
        root.mkdir(parents=True, exist_ok=True)
        lines = [f"{w} {n}" for w in WNIDS for n in self.images[w]]
        lines += [f"{w2} {w2}_absent", "n09999999 n09999999_1", lines[0]]  # absent, unknown synset, duplicate
        self.list_skips = {"n09999999 n09999999_1": "unknown synset", lines[0]: "duplicate"}
        (root / "list.txt").write_text("\n".join(lines) + "\n")
        (root / "synsets.txt").write_text("\n".join(WNIDS) + "\n")
        (root / "metadata.txt").write_text("".join(f"{w}\t{t}\n" for w, t in WORDS.items()))
        outer = {f"{w}.tar": _tar({f"{n}.JPEG": d for n, d in self.images[w].items()}) for w in WNIDS}
        (root / "Images.tar").write_bytes(_tar(outer))
        annotations = {f"{w}.tar.gz": _tar({f"Annotation/{w}/{n}.xml": d for n, d in self.xml[w].items()}, "w:gz")
                       for w in WNIDS}
        (root / "Annotation.tar.gz").write_bytes(_tar(annotations, "w:gz"))
        for w in WNIDS:
            for n, d in self.images[w].items():
                (root / "images" / w).mkdir(parents=True, exist_ok=True)
                (root / "images" / w / f"{n}.JPEG").write_bytes(d)
            for n, d in self.xml[w].items():
                (root / "annotations" / w).mkdir(parents=True, exist_ok=True)
                (root / "annotations" / w / f"{n}.xml").write_bytes(d)
        self.listed = len(lines)

    def args(self, out: Path, *, tar: bool = True, shards: int = 3, extra=()) -> list:
        images = self.root / ("Images.tar" if tar else "images")
        annotations = self.root / ("Annotation.tar.gz" if tar else "annotations")
        return ["data", "build", "--images", images, "--annotations", annotations, "--list",
                self.root / "list.txt", "--synsets", self.root / "synsets.txt", "--metadata",
                self.root / "metadata.txt", "--out", out, "--shards", str(shards), "--max-skipped", "0.5", *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    return Dataset(tmp_path_factory.mktemp("data"))


def _shards(out: Path, name: str = "train") -> list[Path]:
    return sorted(p for p in out.glob(f"{name}-*-of-*") if p.suffix == "" and ".tmp" not in p.name)


def _read_back(out: Path) -> dict[str, dict]:
    """Every record parsed by tf.io with the inception reader's spec, written here independently."""
    import tensorflow as tf

    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/format": tf.io.FixedLenFeature([], tf.string),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
        "image/colorspace": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/channels": tf.io.FixedLenFeature([], tf.int64),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "image/class/synset": tf.io.FixedLenFeature([], tf.string),
        "image/class/text": tf.io.FixedLenFeature([], tf.string),
        "image/object/bbox/label": tf.io.VarLenFeature(tf.int64),
    }
    for key in ("xmin", "ymin", "xmax", "ymax"):
        spec[f"image/object/bbox/{key}"] = tf.io.VarLenFeature(tf.float32)
    out_records = {}
    for path in _shards(out):
        for serialized in tf.data.TFRecordDataset(str(path)):
            example = tf.train.Example.FromString(serialized.numpy())
            assert sorted(example.features.feature) == sorted(spec)  # exactly the inception keys
            parsed = tf.io.parse_single_example(serialized, spec)
            record = {k: (tf.sparse.to_dense(v).numpy().tolist() if isinstance(v, tf.SparseTensor) else v.numpy())
                      for k, v in parsed.items()}
            record["shard"] = path.name
            out_records[record["image/filename"].decode()] = record
    return out_records


def _skipped(out: Path) -> dict[str, str]:
    lines = (out / "train-skipped.tsv").read_text().splitlines()
    assert lines[0] == "file\treason"
    return dict(line.split("\t") for line in lines[1:])


def test_build_from_tar_writes_the_inception_schema_and_handles_bad_inputs(run_cli, dataset, tmp_path):
    out = tmp_path / "rec"
    code, stdout, stderr = run_cli(*dataset.args(out))
    assert code == 0, stderr
    manifest = json.loads((out / "train-manifest.json").read_text())
    written = sum(len(v) for v in dataset.images.values()) - 2  # corrupt and zero-byte are skipped
    assert f"listed {dataset.listed} = written {written} + skipped {dataset.listed - written}" in stdout
    assert manifest["listed"] == manifest["written"] + manifest["skipped"] == dataset.listed
    assert manifest["num_examples"] == written == sum(s["count"] for s in manifest["shards"])
    assert manifest["label_offset"] == 1 and manifest["num_classes"] == 3
    assert manifest["labels"] == [{"label": i + 1, "wnid": w, "text": WORDS[w]} for i, w in enumerate(WNIDS)]

    skipped = _skipped(out)
    for name, reason in dataset.bad.items():
        (entry,) = [k for k in skipped if name in k]
        assert reason in skipped[entry], (name, skipped[entry])
    for entry, reason in dataset.list_skips.items():
        assert reason in skipped[entry]
    assert len(skipped) == manifest["skipped"]

    records = _read_back(out)
    assert len(records) == written
    for wnid in WNIDS:
        for name, data in dataset.images[wnid].items():
            if name in dataset.bad:
                assert f"{name}.JPEG" not in records
                continue
            r = records[f"{name}.JPEG"]
            assert r["image/class/label"] == WNIDS.index(wnid) + 1
            assert r["image/class/synset"].decode() == wnid and r["image/class/text"].decode() == WORDS[wnid]
            assert (r["image/format"], r["image/colorspace"], r["image/channels"]) == (b"JPEG", b"RGB", 3)
            image = Image.open(io.BytesIO(r["image/encoded"]))
            image.load()
            assert (image.format, image.mode) == ("JPEG", "RGB")
            assert (r["image/width"], r["image/height"]) == image.size == Image.open(io.BytesIO(data)).size
            if name in dataset.converted:
                assert r["image/encoded"] != data
            else:
                assert r["image/encoded"] == data  # passed through byte for byte
            boxes = list(zip(r["image/object/bbox/xmin"], r["image/object/bbox/ymin"],
                             r["image/object/bbox/xmax"], r["image/object/bbox/ymax"], strict=True))
            if name in dataset.boxes:  # includes the box outside the image, clamped
                assert boxes == [pytest.approx(dataset.boxes[name])]
                assert r["image/object/bbox/label"] == [WNIDS.index(wnid) + 1]
            else:  # missing or malformed XML: image kept, no boxes
                assert boxes == [] and r["image/object/bbox/label"] == []
    warnings = (out / "train-warnings.tsv").read_text()
    assert "malformed XML" in warnings and "clamped" in warnings and warnings.count("converted") == 3


def test_build_from_folders_equals_build_from_archives_and_workers_do_not_matter(run_cli, dataset, tmp_path,
                                                                                 hpcvision_exe, monkeypatch):
    from hpcvision.data import workers

    assert run_cli(*dataset.args(tmp_path / "tar"))[0] == 0
    monkeypatch.setattr(workers, "start_method", lambda: "spawn")
    assert run_cli(*dataset.args(tmp_path / "dir", tar=False, extra=["--workers", "2"]))[0] == 0
    # a fresh CLI process has no threads and no TensorFlow: its workers are forked
    forked = subprocess.run([*hpcvision_exe, *map(str, dataset.args(tmp_path / "fork", extra=["--workers", "3"]))],
                            capture_output=True, text=True, timeout=120)
    assert forked.returncode == 0, forked.stderr
    tar_shards = _shards(tmp_path / "tar")
    assert len(tar_shards) == 3
    for other in ("dir", "fork"):
        shards = _shards(tmp_path / other)
        assert [p.name for p in shards] == [p.name for p in tar_shards]
        for a, b in zip(tar_shards, shards, strict=True):
            assert a.read_bytes() == b.read_bytes(), (other, a.name)


def test_two_builds_are_byte_identical_and_the_seed_changes_the_order(run_cli, dataset, tmp_path):
    for out, seed in (("a", "12345"), ("b", "12345"), ("c", "7")):
        assert run_cli(*dataset.args(tmp_path / out, extra=["--seed", seed]))[0] == 0
    a, b, c = (_shards(tmp_path / x) for x in "abc")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]
    for name in ("train-manifest.json", "train-skipped.tsv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_label_offset_zero(run_cli, dataset, tmp_path):
    assert run_cli(*dataset.args(tmp_path / "r", extra=["--label-offset", "0"]))[0] == 0
    manifest = json.loads((tmp_path / "r" / "train-manifest.json").read_text())
    assert manifest["label_offset"] == 0 and [e["label"] for e in manifest["labels"]] == [0, 1, 2]
    labels = {r["image/class/synset"].decode(): r["image/class/label"] for r in _read_back(tmp_path / "r").values()}
    assert labels == {w: i for i, w in enumerate(WNIDS)}


def test_resume_rewrites_only_incomplete_shards_and_ignores_leftovers(run_cli, dataset, tmp_path):
    out = tmp_path / "r"
    assert run_cli(*dataset.args(out, shards=4))[0] == 0
    shards = _shards(out)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    manifest_before = (out / "train-manifest.json").read_text()
    # shard 1 was cut short after its sidecar was written; shard 2 never got its sidecar, and a
    # crashed writer of shard 2 left a partial temporary behind; shard 3 is complete
    shards[1].write_bytes(before[shards[1].name][1][:100])
    Path(f"{shards[2]}.json").unlink()
    leftover = temporary_path(shards[2], pid=DEAD_PID)
    leftover.write_bytes(b"partial")
    other = temporary_path(shards[3], pid=DEAD_PID)
    other.write_bytes(b"partial")
    os.utime(shards[0], ns=(1, 1))
    os.utime(shards[3], ns=(1, 1))
    code, stdout, _ = run_cli(*dataset.args(out, shards=4))
    assert code == 0
    assert "2 of this rank's 4 shards already complete" in stdout
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in _shards(out)}
    assert after[shards[0].name][0] == 1 and after[shards[3].name][0] == 1  # not rewritten
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}
    assert (out / "train-manifest.json").read_text() == manifest_before
    # the writer of shard 2 owns its temporaries and removed them; a build touches no shard it does not write
    assert not leftover.exists()
    assert [p.name for p in out.glob(".*.tmp-*")] == [other.name] and other.read_bytes() == b"partial"


def test_ranks_write_disjoint_shards_and_the_last_writes_the_manifest(run_cli, dataset, tmp_path):
    out = tmp_path / "r"
    code, stdout, _ = run_cli(*dataset.args(out, shards=5, extra=["--rank", "1", "--ranks", "2"]))
    assert code == 0 and "pending" in stdout
    assert [p.name for p in _shards(out)] == ["train-00001-of-00005", "train-00003-of-00005"]
    assert not (out / "train-manifest.json").exists()
    code, stdout, _ = run_cli(*dataset.args(out, shards=5, extra=["--rank", "0", "--ranks", "2", "--wait", "5"]))
    assert code == 0 and f"listed {dataset.listed}" in stdout
    assert len(_shards(out)) == 5
    reference = tmp_path / "one"
    assert run_cli(*dataset.args(reference, shards=5))[0] == 0
    for a, b in zip(_shards(out), _shards(reference), strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert (out / "train-manifest.json").read_text() == (reference / "train-manifest.json").read_text()


@pytest.mark.slow
def test_concurrent_ranks_from_the_launcher_environment(dataset, tmp_path, hpcvision_exe):
    """Two processes started at once, ranks from OMPI_COMM_WORLD_* as under mpirun; both see a manifest."""
    out = tmp_path / "r"
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_SIZE="2", TF_CPP_MIN_LOG_LEVEL="2")
        args = [str(a) for a in dataset.args(out, shards=6, extra=["--wait", "60"])][1:]
        procs.append(subprocess.Popen([*hpcvision_exe, "data", *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert len(_shards(out)) == 6
    manifest = json.loads((out / "train-manifest.json").read_text())
    assert manifest["listed"] == dataset.listed == manifest["written"] + manifest["skipped"]
    assert f"listed {dataset.listed}" in results[0][0]  # rank 0 waited for rank 1 if it finished first


def test_tfrecord_framing_matches_tensorflow(tmp_path):
    import tensorflow as tf

    from hpcvision.data.records import RecordWriter, read_records

    payloads = [b"", b"x", os.urandom(70000), b"\x00" * 300]
    with RecordWriter(tmp_path / "ours") as writer:
        for p in payloads:
            writer.write(p)
    with tf.io.TFRecordWriter(str(tmp_path / "theirs")) as writer:
        for p in payloads:
            writer.write(p)
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "theirs").read_bytes()
    assert list(read_records(tmp_path / "ours")) == payloads
    # the length field is little-endian uint64 followed by its masked CRC
    assert struct.unpack("<Q", (tmp_path / "ours").read_bytes()[:8])[0] == 0


@pytest.mark.parametrize("args, message", [
    (["--rank", "2", "--ranks", "2"], "--rank 2 --ranks 2"),
    (["--shards", "0"], "--shards 0"),
    (["--workers", "0"], "--workers 0"),
])
def test_bad_arguments_are_one_line_errors(run_cli, dataset, tmp_path, args, message):
    code, _, stderr = run_cli(*dataset.args(tmp_path / "r", extra=args))
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_unreadable_archive_and_missing_list_are_one_line_errors(run_cli, dataset, tmp_path):
    junk = tmp_path / "Images.tar"
    junk.write_bytes(b"definitely not a tar archive" * 100)
    args = dataset.args(tmp_path / "r")
    args[args.index("--images") + 1] = junk
    code, _, stderr = run_cli(*args)
    assert code == 2 and str(junk) in stderr and len(stderr.strip().splitlines()) == 1
    args = dataset.args(tmp_path / "r")
    args[args.index("--list") + 1] = tmp_path / "nope.txt"
    code, _, stderr = run_cli(*args)
    assert code == 2 and "nope.txt" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "train-manifest.json").exists()


def test_crc32c_matches_the_published_check_value_in_both_implementations():
    from hpcvision.data.records import crc32c, crc32c_python

    assert crc32c(b"123456789") == crc32c_python(b"123456789") == 0xE3069283  # RFC 3720 check value
    data = os.urandom(1000)
    assert crc32c(data) == crc32c_python(data)


def test_benchmark_quick_runs(tmp_path, run_benchmark):
    code, stdout, stderr = run_benchmark("build_throughput", "--quick", "--cache", tmp_path)
    assert code == 0, stderr[-2000:]
    for label in ("(a) I/O limit", "(b) naive", "build, 1 worker", "build, 2 workers", "ratio build 1 worker / (a)"):
        assert label in stdout


def _build_args(images: Path, file_list: Path, synsets: Path, out: Path, *extra) -> list:
    return ["data", "build", "--images", images, "--list", file_list, "--synsets", synsets, "--out", out,
            "--shards", "2", "--max-skipped", "1", *extra]


def test_truncated_archive_skips_what_is_cut_off(run_cli, dataset, tmp_path):
    data = (dataset.root / "Images.tar").read_bytes()
    cut = tmp_path / "Images.tar"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "r"
    code, stdout, stderr = run_cli(*_build_args(cut, dataset.root / "list.txt", dataset.root / "synsets.txt", out))
    assert code == 0, stderr
    manifest = json.loads((out / "train-manifest.json").read_text())
    assert manifest["listed"] == dataset.listed == manifest["written"] + manifest["skipped"]
    reasons = list(_skipped(out).values())
    assert any("truncated" in r for r in reasons), reasons
    assert manifest["written"] > 0


def test_unsafe_members_are_refused_and_nothing_is_written_outside_out(run_cli, tmp_path):
    wnid = WNIDS[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as inner:
        for name, data in ((f"{wnid}_0.JPEG", _jpeg(0)), (f"../{wnid}_1.JPEG", _jpeg(1)),
                           (f"/abs/{wnid}_2.JPEG", _jpeg(2))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            inner.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(f"{wnid}_3.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        inner.addfile(link)
    (tmp_path / "Images.tar").write_bytes(_tar({f"{wnid}.tar": buf.getvalue()}))
    (tmp_path / "list.txt").write_text("".join(f"{wnid} {wnid}_{i}\n" for i in range(4)))
    (tmp_path / "synsets.txt").write_text(f"{wnid}\n")
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "r"
    code, _, stderr = run_cli(*_build_args(tmp_path / "Images.tar", tmp_path / "list.txt", tmp_path / "synsets.txt", out))
    assert code == 0, stderr
    skipped = _skipped(out)
    assert "unsafe member path" in skipped[f"{wnid}/{wnid}_1.JPEG"]
    assert "unsafe member path" in skipped[f"{wnid}/{wnid}_2.JPEG"]
    assert "symlink" in skipped[f"{wnid}/{wnid}_3.JPEG"]
    assert json.loads((out / "train-manifest.json").read_text())["written"] == 1
    assert {p for p in tmp_path.rglob("*") if out not in p.parents and p != out} == before


def test_flat_validation_tar_with_labels_file(run_cli, tmp_path):
    names = {f"ILSVRC2012_val_{i:08d}": WNIDS[i % 3] for i in range(1, 7)}
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(_tar({f"{n}.JPEG": _jpeg(i) for i, n in enumerate(names)}))
    (tmp_path / "labels.txt").write_text("".join(f"{n}.JPEG {w}\n" for n, w in names.items()))
    (tmp_path / "list.txt").write_text("".join(f"{w} {n}\n" for n, w in names.items()))
    (tmp_path / "synsets.txt").write_text("\n".join(WNIDS) + "\n")
    out = tmp_path / "r"
    code, _, stderr = run_cli(*_build_args(tmp_path / "ILSVRC2012_img_val.tar", tmp_path / "list.txt",
                                           tmp_path / "synsets.txt", out, "--name", "validation",
                                           "--val-labels", tmp_path / "labels.txt"))
    assert code == 0, stderr
    from hpcvision.data.records import decode_example, read_records

    seen = {}
    for shard in sorted(out.glob("validation-0000?-of-00002")):
        for record in read_records(shard):
            features = decode_example(record)
            seen[features["image/filename"][0].decode()] = features["image/class/synset"][0].decode()
    assert seen == {f"{n}.JPEG": w for n, w in names.items()}


def _records_by_file(out: Path, name: str) -> dict[str, dict]:
    from hpcvision.data.records import decode_example, read_records

    return {features["image/filename"][0].decode(): features
            for shard in sorted(out.glob(f"{name}-0000?-of-0000?")) for features in map(decode_example, read_records(shard))}


def test_a_course_line_takes_the_image_synset_from_the_name_and_the_xml_from_column_1(run_cli, tmp_path):
    a, b = "n00000001", "n00000002"
    images = sample_images({a: 1, b: 2})
    write_images_tar(tmp_path / "Images.tar", images)
    write_annotations_tgz(tmp_path / "Annotation.tar.gz", images, folders={f"{b}_2": a})  # Annotation/a/b_2.xml
    (tmp_path / "synsets.txt").write_text(f"{a}\n{b}\n")
    out = tmp_path / "r"
    boxed = []
    for xml_folder in (b, a):  # b's own folder has no XML of b_2; then the list says where it is
        (tmp_path / "list.txt").write_text(f"{a} {a}_1\n{b} {b}_1\n{xml_folder} {b}_2\n")
        code, _, stderr = run_cli(*_build_args(tmp_path / "Images.tar", tmp_path / "list.txt",
                                               tmp_path / "synsets.txt", out, "--annotations",
                                               tmp_path / "Annotation.tar.gz"))
        assert code == 0, stderr
        boxed.append(json.loads((out / "train-manifest.json").read_text())["images_with_boxes"])
    assert boxed == [2, 3]  # the XML folder is part of what makes a shard complete
    moved = _records_by_file(out, "train")[f"{b}_2.JPEG"]
    assert moved["image/class/synset"] == [b.encode()] and moved["image/class/label"] == [2]
    assert moved["image/object/bbox/label"] == [2] and len(moved["image/object/bbox/xmin"]) == 1


def test_a_replaced_archive_makes_complete_shards_stale(run_cli, dataset, tmp_path):
    archive = tmp_path / "Images.tar"
    archive.write_bytes((dataset.root / "Images.tar").read_bytes())
    args = dataset.args(tmp_path / "r")
    args[args.index("--images") + 1] = archive
    assert run_cli(*args)[0] == 0
    code, stdout, _ = run_cli(*args)
    assert code == 0 and "3 of this rank's 3 shards already complete" in stdout
    os.utime(archive, (1_000_000_000, 1_000_000_000))  # same bytes, but a different file now
    code, stdout, _ = run_cli(*args)
    assert code == 0 and "already complete" not in stdout


def test_a_replaced_image_or_edited_xml_in_a_folder_source_makes_its_shard_stale(run_cli, dataset, tmp_path):
    images, annotations = tmp_path / "images", tmp_path / "annotations"
    shutil.copytree(dataset.root / "images", images)
    shutil.copytree(dataset.root / "annotations", annotations)
    args = dataset.args(tmp_path / "r", tar=False)
    args[args.index("--images") + 1], args[args.index("--annotations") + 1] = images, annotations
    assert run_cli(*args)[0] == 0
    w0 = WNIDS[0]
    replaced, edited = f"{w0}_1", f"{w0}_0"
    before = _read_back(tmp_path / "r")
    touched = {before[f"{replaced}.JPEG"]["shard"], before[f"{edited}.JPEG"]["shard"]}
    new_image = _jpeg(77)
    (images / w0 / f"{replaced}.JPEG").write_bytes(new_image)
    (annotations / w0 / f"{edited}.xml").write_bytes(_voc((0, 0, 24, 36)))
    code, stdout, _ = run_cli(*args)
    assert code == 0 and f"{3 - len(touched)} of this rank's 3 shards already complete" in stdout
    after = _read_back(tmp_path / "r")
    assert after[f"{replaced}.JPEG"]["image/encoded"] == new_image
    assert after[f"{edited}.JPEG"]["image/object/bbox/xmax"] == [pytest.approx(0.5)]
    code, stdout, _ = run_cli(*args)
    assert code == 0 and "3 of this rank's 3 shards already complete" in stdout  # and now current


@pytest.mark.parametrize("code_", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_ends_build_in_one_line_without_leftovers(run_cli, dataset, tmp_path,
                                                                           monkeypatch, code_):
    from hpcvision.data import records

    write, calls = records.RecordWriter.write, []

    def failing(self, record):
        calls.append(self.path)
        if len(calls) == 3:
            raise OSError(code_, os.strerror(code_))  # as file.write raises it: no file name
        write(self, record)

    monkeypatch.setattr(records.RecordWriter, "write", failing)
    out = tmp_path / "r"
    code, _, stderr = run_cli(*dataset.args(out))
    assert code == 2
    assert stderr.strip() == f"hpcvision: error: {out / 'train-00000-of-00003'}: {os.strerror(code_)}"
    assert not [p.name for p in out.rglob("*") if ".tmp-" in p.name]


SLOW_BUILD = """
import sys, time
from hpcvision.cli import main
from hpcvision.data import records
write = records.RecordWriter.write
def slow(self, record):
    time.sleep(0.05)
    write(self, record)
records.RecordWriter.write = slow
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_two_identical_builds_at_once_both_complete_with_the_same_shards(run_cli, dataset, tmp_path):
    """Each writes every shard (0.05 s a record, started together): neither removes the other's live
    temporary, both renames land, and the shards are those of a build alone."""
    args = [str(a) for a in dataset.args(tmp_path / "r", shards=2)]
    start = time.time() + 1.5
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HPCVISION_PROGRESS="0")
    procs = [subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(start), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    reference = tmp_path / "alone"
    assert run_cli(*dataset.args(reference, shards=2))[0] == 0
    assert [p.read_bytes() for p in _shards(tmp_path / "r")] == [p.read_bytes() for p in _shards(reference)]
    assert not list((tmp_path / "r").glob(".*.tmp-*"))


def test_cleanup_removes_only_temporaries_whose_writer_is_dead(tmp_path):
    """This host: the pid says; another node (or an old name without host): an hour without change."""
    from hpcvision.files import STALE_S, remove_temporaries

    shard = tmp_path / "train-00000-of-00001"
    live, dead = temporary_path(shard, pid=os.getppid()), temporary_path(shard, pid=DEAD_PID)
    elsewhere = tmp_path / f".{shard.name}.tmp-othernode-{os.getpid()}-0a1b2c3d"
    elsewhere_old = tmp_path / f".{shard.name}.tmp-othernode-{os.getpid()}-4e5f6a7b"
    old_style = tmp_path / f".{shard.name}.tmp-{os.getpid()}-8c9d0e1f"
    for path in (live, dead, elsewhere, elsewhere_old, old_style):
        path.write_bytes(b"partial")
    long_ago = time.time() - STALE_S - 60
    for path in (elsewhere_old, old_style):
        os.utime(path, (long_ago, long_ago))
    assert remove_temporaries(tmp_path, shard.name) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, elsewhere.name])


def test_a_shard_task_reaches_a_spawned_worker_unchanged_with_its_items_and_xml_folders():
    import pickle

    from hpcvision.data.build import ShardTask
    from hpcvision.data.lists import ListedImage

    items = (ListedImage("n04065464", "n04065464_94", 7, "n03636649"), ListedImage("n01440764", "ILSVRC2012_val_1", 3))
    task = ShardTask(5, "/out/train-00005-of-00064", items, "f" * 64)
    copy = pickle.loads(pickle.dumps(task))
    assert copy == task and copy.items[0].xml_wnid == "n03636649" and copy.items[1].xml_wnid == "n01440764"
    assert pickle.loads(pickle.dumps(ShardTask(0, "/out/x", (), "0"))) == ShardTask(0, "/out/x", (), "0")


def test_images_come_back_in_plan_order_and_a_source_that_loses_one_is_an_error():
    from hpcvision.data.lists import ListedImage
    from hpcvision.data.sources import Fetched, Source
    from hpcvision.errors import CountMismatch

    class Reversed(Source):  # yields in its own order, optionally dropping the first item asked for
        def __init__(self, drop: bool):
            self.drop = drop

        def fetch(self, items):
            for item in reversed(items[1:] if self.drop else items):
                yield Fetched(item, item.name.encode(), None)

    items = [ListedImage("n01", f"n01_{i}", i) for i in range(5)]
    assert [f.data for f in Reversed(False).fetch_in_order(items, "shard-0")] == [
        f"n01_{i}".encode() for i in range(5)]
    with pytest.raises(CountMismatch, match="shard-0: the source returned 4 of 5 items"):
        list(Reversed(True).fetch_in_order(items, "shard-0"))


def test_annotations_reach_their_own_images_and_a_source_that_loses_or_invents_one_is_an_error(tmp_path):
    from hpcvision.data import records
    from hpcvision.data.build import ShardTask, Sources, read_annotations, write_share
    from hpcvision.data.lists import ListedImage
    from hpcvision.data.sources import NO_ANNOTATION, Fetched, Source
    from hpcvision.errors import CountMismatch

    class Images(Source):  # a JPEG whose size tells which item it is, in reversed order
        def fetch(self, items):
            for item in reversed(items):
                yield Fetched(item, _jpeg(0, size=(40 + item.line, 30)), None)

    class Xml(Source):  # every second item has an XML; `drop` loses one, `invent` answers for a copy
        def __init__(self, drop=False, invent=False):
            self.drop, self.invent = drop, invent

        def fetch(self, items):
            for item in items[1:] if self.drop else items:
                if item.line % 2:
                    yield Fetched(item, None, NO_ANNOTATION)
                else:
                    box = (item.line, 1, item.line + 10, 11)
                    yield Fetched(ListedImage(*item) if self.invent else item,
                                  _voc(box, size=(40 + item.line, 30)), None)

    items = tuple(ListedImage("n01", f"n01_{i}", i) for i in range(6))
    assert sorted(read_annotations(Xml(), list(items))) == sorted(id(i) for i in items if i.line % 2 == 0)
    with pytest.raises(CountMismatch, match="returned 5 of 6 items"):
        read_annotations(Xml(drop=True), list(items))

    labels = {"n01": (1, "n01")}
    task = ShardTask(0, str(tmp_path / "train-00000-of-00001"), items, "f" * 64)
    write_share(Sources(Images(), Xml(), labels), [task], lambda n: None)
    for i, raw in enumerate(records.read_records(task.path)):  # each box is its own image's (xmin = line/width)
        example = records.decode_example(raw)
        assert example["image/width"] == [40 + i]
        expected = [i / (40 + i)] if i % 2 == 0 else []
        assert example["image/object/bbox/xmin"] == pytest.approx(expected)
    with pytest.raises(CountMismatch, match="3 came back for items not in this share"):
        write_share(Sources(Images(), Xml(invent=True), labels), [task], lambda n: None)


def test_a_shards_content_digest_follows_its_own_items_and_synsets_only():
    import numpy as np

    from hpcvision.data.build import shard_contents
    from hpcvision.data.lists import ListedImage

    wnids = ["n01", "n02", "n03"]
    items = [ListedImage(w, f"{w}_{i}", 3 * k + i + 1) for k, w in enumerate(wnids) for i in range(3)]
    order, bounds = np.arange(9), [0, 4, 9]  # shard 0: n01 x3 + n02_0; shard 1: the rest

    def contents(items, order=order):
        return shard_contents([items[i] for i in order], wnids, bounds)

    base = contents(items)
    assert [codes for _, codes in base] == [[0, 1], [1, 2]]
    renamed = list(items)
    renamed[7] = ListedImage("n03", "n03_9", 8)
    assert contents(renamed)[0] == base[0] and contents(renamed)[1][0] != base[1][0]
    xml_elsewhere = list(items)
    xml_elsewhere[1] = ListedImage("n01", "n01_1", 2, "n02")  # the course lists' other XML folder
    assert contents(xml_elsewhere)[0][0] != base[0][0] and contents(xml_elsewhere)[1] == base[1]
    swapped = np.array([1, 0, 2, 3, 4, 5, 6, 7, 8])  # the same images in another order within shard 0
    assert contents(items, swapped)[0][0] != base[0][0] and contents(items, swapped)[1] == base[1]
    longer = list(items)
    longer[0] = ListedImage("n01", "n01_0x", 1)  # a longer name: only its own shard changes
    assert contents(longer)[0][0] != base[0][0] and contents(longer)[1] == base[1]
    moved = list(items)  # one name's end moved to the next (n01_0, n01_1 -> n01_01, n01_): another digest
    moved[0], moved[1] = ListedImage("n01", "n01_01", 1), ListedImage("n01", "n01_", 2)
    assert contents(moved)[0][0] != base[0][0]
    assert [codes for _, codes in shard_contents([], wnids, [0, 0])] == [[]]  # an empty shard: no synsets
