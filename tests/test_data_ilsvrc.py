"""ILSVRC-2012 and ImageFolder data as users hold it (issue 10, items 4 and 5): the flat validation tar
with its built-in labels, the devkit's integer ground truth, lists made from the source (`data list`,
build and extract without `--list`), any image suffix, and the bounding-box tarballs."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from data_archives import jpeg_bytes, png_bytes, sample_images, tar_bytes, voc_xml, write_images_tar

from hpcvision.data.lists import ListedImage, ilsvrc2012_val_labels, read_file_list, read_val_labels
from hpcvision.data.records import decode_example, read_records
from hpcvision.data.sources import NO_ANNOTATION, NOT_AN_IMAGE, open_annotations, open_images
from hpcvision.errors import UserError

# ILSVRC2012_val_00000001..3 are labelled n01751748, n09193705, n02105855 (the devkit's ground truth)
VAL = {1: "n01751748", 2: "n09193705", 3: "n02105855"}


def records(out: Path, name: str) -> dict[str, tuple[str, int]]:
    """{image/filename: (synset, label)} of every record of split `name` in `out`."""
    found = {}
    for shard in sorted(out.glob(f"{name}-*-of-*")):
        if shard.suffix:  # sidecars
            continue
        for data in read_records(shard):
            example = decode_example(data)
            found[example["image/filename"][0].decode()] = (example["image/class/synset"][0].decode(),
                                                            example["image/class/label"][0])
    return found


def flat_val_tar(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    path.write_bytes(tar_bytes({**{f"ILSVRC2012_val_{n:08d}.JPEG": jpeg_bytes(n) for n in VAL}, **(extra or {})}))
    return path


def image_folder(root: Path) -> Path:
    """An ImageFolder tree: .jpg, .png and .JPEG images, and files that are no image."""
    for wnid, files in {"n01": {"a.jpg": jpeg_bytes(1), "b.PNG": png_bytes(2)},
                        "n02": {"c.JPEG": jpeg_bytes(3), "d.jpeg": jpeg_bytes(4), "notes.txt": b"x"}}.items():
        (root / wnid).mkdir(parents=True)
        for name, data in files.items():
            (root / wnid / name).write_bytes(data)
    (root / "README").write_text("not an image folder")
    return root


def test_the_built_in_labels_are_the_devkit_ground_truth():
    labels = ilsvrc2012_val_labels()
    assert len(labels) == 50_000 and len(set(labels.values())) == 1000
    assert {n: labels[f"ILSVRC2012_val_{n:08d}"] for n in VAL} == VAL


def test_devkit_integer_ground_truth_is_refused_unless_its_ids_are_mapped(tmp_path):
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("490\n361\n171\n")
    with pytest.raises(UserError, match=r"ground_truth.txt: class numbers, not wnids .* give --val-label-ids"):
        read_val_labels(truth)
    pairs = tmp_path / "ids.txt"
    pairs.write_text("490 n01751748\n361 n09193705\n171 n02105855\n")
    clsloc = tmp_path / "map_clsloc.txt"  # the devkit's later form: '<wnid> <id> <words>'
    clsloc.write_text("n01751748 490 sea_snake\nn09193705 361 alp\nn02105855 171 Shetland_sheepdog\n")
    for ids in (pairs, clsloc):
        assert read_val_labels(truth, ids) == {f"ILSVRC2012_val_{n:08d}": w for n, w in VAL.items()}
    pairs.write_text("490 n01751748\n")
    with pytest.raises(UserError, match=r"ground_truth.txt:2: class number 361 is not in .*ids.txt"):
        read_val_labels(truth, pairs)


def test_integer_labels_end_build_in_one_line(tmp_path, run_cli):
    val = flat_val_tar(tmp_path / "ILSVRC2012_img_val.tar")
    truth = tmp_path / "ground_truth.txt"
    truth.write_text("490\n361\n171\n")
    listing = tmp_path / "val.txt"
    listing.write_text("".join(f"{w} ILSVRC2012_val_{n:08d}\n" for n, w in VAL.items()))
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("".join(f"{w}\n" for w in sorted(VAL.values())))
    code, _, err = run_cli("data", "build", "--images", val, "--val-labels", truth, "--list", listing,
                           "--synsets", synsets, "--out", tmp_path / "out", "--shards", "1")
    assert code == 2 and "class numbers, not wnids" in err and len(err.strip().splitlines()) == 1


def test_flat_val_tar_builds_with_no_list_and_no_labels(tmp_path, run_cli):
    val = flat_val_tar(tmp_path / "ILSVRC2012_img_val.tar", extra={"holiday.JPEG": jpeg_bytes(9)})
    out = tmp_path / "out"
    code, _, err = run_cli("data", "build", "--images", val, "--out", out, "--name", "validation",
                           "--shards", "1", "--max-skipped", "0.5")
    assert code == 0, err
    wnids = sorted(VAL.values())
    assert records(out, "validation") == {
        f"ILSVRC2012_val_{n:08d}.JPEG": (w, wnids.index(w) + 1) for n, w in VAL.items()}
    skipped = (out / "validation-skipped.tsv").read_text()
    assert "holiday.JPEG\tno label in the built-in ILSVRC-2012 labels" in skipped


def test_a_flat_tar_of_jpg_and_png_images_builds_like_the_jpeg_one(tmp_path, run_cli):
    names = {n: f"ILSVRC2012_val_{n:08d}" + (".jpg", ".png", ".jpeg")[n % 3] for n in VAL}
    val = tmp_path / "val.tar"
    val.write_bytes(tar_bytes({names[n]: png_bytes(n) if names[n].endswith(".png") else jpeg_bytes(n) for n in VAL}))
    out = tmp_path / "out"
    code, _, err = run_cli("data", "build", "--images", val, "--out", out, "--name", "validation", "--shards", "1")
    assert code == 0, err
    wnids = sorted(VAL.values())
    assert records(out, "validation") == {
        f"ILSVRC2012_val_{n:08d}.JPEG": (w, wnids.index(w) + 1) for n, w in VAL.items()}


def test_a_new_version_of_the_built_in_labels_rebuilds_instead_of_already_complete(tmp_path, run_cli, monkeypatch):
    import hpcvision.data.sources as sources

    val = flat_val_tar(tmp_path / "ILSVRC2012_img_val.tar")
    args = ("data", "build", "--images", val, "--out", tmp_path / "out", "--name", "validation", "--shards", "1")
    assert run_cli(*args)[0] == 0
    code, stdout, err = run_cli(*args)
    assert code == 0 and "already complete" in stdout, err
    monkeypatch.setattr(sources, "built_in_labels_version", lambda: "99.0")  # a release correcting a label
    code, stdout, err = run_cli(*args)
    assert code == 0 and "already complete" not in stdout, err


def test_data_list_of_a_synset_tar_archive_reads_back_as_the_list(tmp_path, run_cli):
    images = sample_images({"n01440764": 2, "n01443537": 1})
    archive = write_images_tar(tmp_path / "ILSVRC2012_img_train.tar", images)
    code, out, err = run_cli("data", "list", "--images", archive, "--out", tmp_path / "train.txt")
    assert code == 0, err
    assert "listed 3 images in 2 synsets" in out
    assert (tmp_path / "train.txt").read_text() == (
        "n01440764 n01440764_1\nn01440764 n01440764_2\nn01443537 n01443537_1\n")
    assert [(i.wnid, i.name) for i in read_file_list(tmp_path / "train.txt").images] == [
        (w, n) for w, members in images.items() for n in members]


def test_image_folder_lists_every_image_suffix_and_reports_the_rest(tmp_path, run_cli, caplog):
    tree = image_folder(tmp_path / "train")
    listed = open_images(tree).list_all()
    assert [(i.wnid, i.name) for i in listed.images] == [("n01", "a"), ("n01", "b"), ("n02", "c"), ("n02", "d")]
    assert listed.skipped == [("README", "not in a synset folder <wnid>/"), ("n02/notes.txt", NOT_AN_IMAGE)]
    assert listed.listed == 6
    code, _, err = run_cli("data", "list", "--images", tree, "--out", tmp_path / "list.txt")
    assert code == 0 and "n02/notes.txt: not an image" in caplog.text, err


def test_extract_of_an_image_folder_writes_a_png_under_png_and_builds_from_it(tmp_path, run_cli):
    tree = image_folder(tmp_path / "train")
    out = tmp_path / "x"
    code, _, err = run_cli("data", "extract", "--images", tree, "--out", out, "--max-skipped", "0.5")
    assert code == 0, err
    assert (out / "images" / "n01" / "b.png").read_bytes() == (tree / "n01" / "b.PNG").read_bytes()
    assert not (out / "images" / "n01" / "b.JPEG").exists()
    assert (out / "images" / "n01" / "a.JPEG").read_bytes() == (tree / "n01" / "a.jpg").read_bytes()
    code, stdout, err = run_cli("data", "extract", "--images", tree, "--out", out, "--max-skipped", "0.5")
    assert code == 0 and not (out / "images" / "n01" / "b.JPEG").exists(), err  # already present, not rewritten
    code, _, err = run_cli("data", "build", "--images", out / "images", "--out", tmp_path / "rec", "--shards", "1")
    assert code == 0, err
    assert set(records(tmp_path / "rec", "train")) == {"a.JPEG", "b.JPEG", "c.JPEG", "d.JPEG"}


def test_image_folder_builds_without_a_list(tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("data", "build", "--images", image_folder(tmp_path / "train"), "--out", out,
                           "--shards", "1", "--max-skipped", "0.5")
    assert code == 0, err
    # image/filename says .JPEG: the record's image is a JPEG whatever the file was (the PNG is converted)
    assert records(out, "train") == {"a.JPEG": ("n01", 1), "b.JPEG": ("n01", 1), "c.JPEG": ("n02", 2),
                                     "d.JPEG": ("n02", 2)}
    assert "n02/notes.txt\tnot an image" in (out / "train-skipped.tsv").read_text()


def test_list_lines_with_any_image_suffix_find_the_file_in_folders_and_tars(tmp_path, run_cli):
    tree = image_folder(tmp_path / "train")
    listing = tmp_path / "list.txt"
    listing.write_text("n01 a.jpg\nn01 b.PNG\nn02 c\nn02 d.JPEG\n")
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n01\nn02\n")
    code, _, err = run_cli("data", "build", "--images", tree, "--list", listing, "--synsets", synsets,
                           "--out", tmp_path / "out", "--shards", "1")
    assert code == 0, err
    assert set(records(tmp_path / "out", "train")) == {"a.JPEG", "b.JPEG", "c.JPEG", "d.JPEG"}
    archive = tmp_path / "Images.tar"  # synset tars whose members end in .jpg / .png
    archive.write_bytes(tar_bytes({"n01.tar": tar_bytes({"a.jpg": jpeg_bytes(1), "b.png": png_bytes(2)})}))
    source = open_images(archive, index_dir=tmp_path / "idx")
    fetched = {f.item.name: f.data for f in source.fetch([ListedImage("n01", "a", 1), ListedImage("n01", "b", 2)])}
    assert fetched == {"a": jpeg_bytes(1), "b": png_bytes(2)}


def test_ilsvrc_bounding_box_tarballs_are_annotations(tmp_path):
    train_xml, val_xml = voc_xml("n01440764", "n01440764_1"), voc_xml("n01751748", "ILSVRC2012_val_00000001")
    bbox = tmp_path / "ILSVRC2012_bbox_train_v2.tar.gz"
    bbox.write_bytes(gzip.compress(tar_bytes({"n01440764/n01440764_1.xml": train_xml})))
    val = tmp_path / "ILSVRC2012_bbox_val_v3.tgz"
    val.write_bytes(tar_bytes({"val/ILSVRC2012_val_00000001.xml": val_xml}, mode="w:gz"))
    wanted = [ListedImage("n01440764", "n01440764_1", 1), ListedImage("n01440764", "n01440764_2", 2)]
    got = {f.item.name: f.data or f.problem for f in open_annotations(bbox, index_dir=tmp_path / "i").fetch(wanted)}
    assert got == {"n01440764_1": train_xml, "n01440764_2": NO_ANNOTATION}
    item = ListedImage("n01751748", "ILSVRC2012_val_00000001", 1)
    assert [f.data for f in open_annotations(val).fetch([item])] == [val_xml]
