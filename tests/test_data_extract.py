"""`hpcvision data extract`: exactly the listed files, reports that reconcile, ranks, workers, resume."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest
from data_archives import (
    DEAD_PID,
    jpeg_bytes,
    sample_images,
    tar_bytes,
    voc_xml,
    write_annotations_tgz,
    write_images_tar,
    write_list,
)

from hpcvision.data.extract import rank_slice, split_by_synset
from hpcvision.data.lists import ListedImage
from hpcvision.files import temporary_path


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root (except the index cache) as relative path -> bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".hpcvision-index" not in p.parts
    }


def counts(stdout: str) -> tuple[int, int, int]:
    listed, written, skipped = re.search(r"listed (\d+) = written (\d+) \+ skipped (\d+)", stdout).groups()
    return int(listed), int(written), int(skipped)


def report_rows(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert lines[0] == "file\treason"
    return dict(line.split("\t", 1) for line in lines[1:])


@pytest.fixture
def images():
    return sample_images({"n01": 4, "n02": 3, "n03": 2, "n04": 1})


def expected_tree(images, xml_skip=frozenset()):
    files = {}
    for wnid, members in images.items():
        for name, data in members.items():
            files[f"images/{wnid}/{name}.JPEG"] = data
            if name not in xml_skip:
                files[f"annotations/{wnid}/{name}.xml"] = voc_xml(wnid, name)
    return files


def test_extracts_exactly_the_listed_files_and_reports_every_bad_line(tmp_path, run_cli, images):
    inner = tar_bytes(
        {"n05_1.JPEG": jpeg_bytes(50), "../n05_2.JPEG": b"escape", "/tmp/n05_3.JPEG": b"absolute"},
        links={"n05_4.JPEG": str(tmp_path / "secret.JPEG")},
    )
    archive = write_images_tar(tmp_path / "Images.tar", images, extra={"n05.tar": inner})
    annotations = write_annotations_tgz(tmp_path / "Annotation.tar.gz", images, skip={"n01_2"})
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n01\nn02\nn03\nn04\nn05\nn06\n")
    bad_lines = (
        "n01 n01_1",  # duplicate
        "n01 n01_99",  # absent from the archive
        "n06 n06_1",  # synset without a tar
        "n77 n77_1",  # unknown synset (not in synsets.txt)
        "n01 n01_5 extra",  # malformed
        "n05 n05_1",  # fine
        "n05 n05_2",  # ../ member
        "n05 n05_3",  # absolute member
        "n05 n05_4",  # symlink member
    )
    listing = write_list(tmp_path / "list.txt", images, bad_lines)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "data",
        "extract",
        "--images",
        archive,
        "--annotations",
        annotations,
        "--list",
        listing,
        "--out",
        out,
        "--synsets",
        synsets,
        "--max-skipped",
        "1",
    )
    assert code == 0, stderr
    expected = expected_tree(images, xml_skip={"n01_2"})
    expected["images/n05/n05_1.JPEG"] = jpeg_bytes(50)
    got = tree(out)
    reports = {name: got.pop(name) for name in list(got) if name.startswith("extract-")}
    assert got == expected
    assert counts(stdout) == (19, 11, 8)
    rows = report_rows(out / "extract-report-rank0.tsv")
    assert rows == {
        "n01 n01_1": "duplicate of line 1",
        "n01/n01_99.JPEG": "not in archive",
        "n06/n06_1.JPEG": "synset n06 not in archive",
        "n77 n77_1": "unknown synset n77",
        "n01 n01_5 extra": "malformed line: expected '<wnid> <name>', got 3 field(s) (line 15)",
        "n05/n05_2.JPEG": "unsafe member path '../n05_2.JPEG'",
        "n05/n05_3.JPEG": "unsafe member path '/tmp/n05_3.JPEG'",
        "n05/n05_4.JPEG": "symlink member 'n05_4.JPEG'",
    }
    # n05_1 has a tar but no annotation archive member; n01_2's XML is missing
    assert report_rows(out / "extract-annotations-missing-rank0.tsv") == {
        "n01/n01_2.xml": "no annotation",
        "n05/n05_1.xml": "no annotation",
    }
    assert set(reports) == {"extract-report-rank0.tsv", "extract-annotations-missing-rank0.tsv"}
    # nothing escaped --out: the inputs and out/ are all there is
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Annotation.tar.gz",
        "Images.tar",
        "list.txt",
        "out",
        "synsets.txt",
    ]
    assert str(out / "images") in stdout and str(out / "extract-report-rank0.tsv") in stdout


def test_rerun_resumes_and_rewrites_only_wrong_files(tmp_path, run_cli, images):
    archive = write_images_tar(tmp_path / "Images.tar", images)
    listing = write_list(tmp_path / "list.txt", images)
    out = tmp_path / "out"
    args = ("data", "extract", "--images", archive, "--list", listing, "--out", out)
    assert run_cli(*args)[0] == 0
    damaged = out / "images/n01/n01_1.JPEG"
    damaged.write_bytes(b"partial")
    stale = temporary_path(out / "images/n03/n03_1.JPEG", pid=DEAD_PID)  # what a killed run leaves behind
    stale.write_bytes(b"half")
    live = temporary_path(out / "images/n03/n03_2.JPEG", pid=os.getppid())  # a concurrent extract's
    live.write_bytes(b"being written")
    keep = out / "images/n02/n02_1.JPEG"
    before = keep.stat().st_mtime_ns, keep.stat().st_ino
    os.utime(keep, ns=(1, 1))
    code, stdout, _ = run_cli(*args)
    assert code == 0
    assert counts(stdout) == (10, 10, 0)
    assert "9 already present" in stdout
    assert damaged.read_bytes() == images["n01"]["n01_1"]
    assert keep.stat().st_mtime_ns == 1 and keep.stat().st_ino == before[1]  # untouched
    assert not stale.exists() and list(out.rglob(".*.tmp*")) == [live]


def test_rank_slices_are_disjoint_cover_the_list_and_are_deterministic():
    items = [
        ListedImage(f"n{w:02d}", f"n{w:02d}_{i}", 1 + w * 10 + i) for w in range(7) for i in range(w + 1)
    ]
    slices = [rank_slice(items, r, 3) for r in range(3)]
    flat = [item for part in slices for item in part]
    assert sorted(flat, key=lambda i: i.line) == items  # union is the list, no item twice
    assert len(set(flat)) == len(items)
    for a in range(3):  # whole synsets: no synset in two slices
        for b in range(a + 1, 3):
            assert not {i.wnid for i in slices[a]} & {i.wnid for i in slices[b]}
    assert slices == [rank_slice(list(items), r, 3) for r in range(3)]
    assert max(map(len, slices)) - min(map(len, slices)) <= 7  # balanced to within the largest synset
    assert split_by_synset(items, 1) == [items]


def test_ranks_together_write_what_one_process_writes(tmp_path, run_cli, images):
    archive = write_images_tar(tmp_path / "Images.tar", images)
    listing = write_list(tmp_path / "list.txt", images, ("n01 n01_1", "n09 n09_1"))
    code, stdout, _ = run_cli(
        "data", "extract", "--images", archive, "--list", listing, "--out", tmp_path / "one", "--max-skipped", "1"
    )
    assert code == 0 and counts(stdout) == (12, 10, 2)
    totals = [0, 0, 0]
    for rank in range(3):
        code, stdout, _ = run_cli(
            "data",
            "extract",
            "--images",
            archive,
            "--list",
            listing,
            "--out",
            tmp_path / "ranked",
            "--rank",
            rank,
            "--ranks",
            "3",
            "--max-skipped",
            "1",
        )
        assert code == 0
        totals = [a + b for a, b in zip(totals, counts(stdout), strict=True)]
    assert totals == [12, 10, 2]
    one, ranked = tree(tmp_path / "one"), tree(tmp_path / "ranked")
    assert {k: v for k, v in one.items() if k.startswith("images/")} == {
        k: v for k, v in ranked.items() if k.startswith("images/")
    }
    rows = {}
    for rank in range(3):
        rows.update(report_rows(tmp_path / "ranked" / f"extract-report-rank{rank}.tsv"))
    assert rows == report_rows(tmp_path / "one" / "extract-report-rank0.tsv")


def test_rank_defaults_come_from_the_launcher_environment(tmp_path, run_cli, images, monkeypatch):
    archive = write_images_tar(tmp_path / "Images.tar", images)
    listing = write_list(tmp_path / "list.txt", images)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    code, stdout, _ = run_cli(
        "data", "extract", "--images", archive, "--list", listing, "--out", tmp_path / "o"
    )
    assert code == 0
    expected = rank_slice([ListedImage(w, n, 0) for w, m in images.items() for n in m], 1, 2)
    assert "rank 1 of 2" in stdout and counts(stdout)[0] == len(expected)
    assert (tmp_path / "o" / "extract-report-rank1.tsv").exists()


def test_truncated_archives_are_reported_not_fatal(tmp_path, run_cli, images):
    archive = write_images_tar(
        tmp_path / "Images.tar", images, extra={"n08.tar": tar_bytes({"n08_1.JPEG": jpeg_bytes(8)})[:700]}
    )
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) - 10240 - 4096])  # cut inside the last synset tar too
    listing = write_list(tmp_path / "list.txt", images, ("n08 n08_1",))
    code, stdout, _ = run_cli(
        "data", "extract", "--images", archive, "--list", listing, "--out", tmp_path / "o", "--max-skipped", "1"
    )
    assert code == 0
    listed, written, skipped = counts(stdout)
    assert listed == 11 and skipped >= 1 and listed == written + skipped
    rows = report_rows(tmp_path / "o" / "extract-report-rank0.tsv")
    assert rows["n08/n08_1.JPEG"].startswith("truncated archive")
    assert all(reason.startswith("truncated archive") for reason in rows.values())
    for name in tree(tmp_path / "o"):
        if name.startswith("images/"):
            wnid, file = name.split("/")[1:]
            assert images[wnid][file[: -len(".JPEG")]] == (tmp_path / "o" / name).read_bytes()


def test_ilsvrc2012_train_and_flat_val_layouts(tmp_path, run_cli, images):
    train = write_images_tar(tmp_path / "ILSVRC2012_img_train.tar", images)
    listing = write_list(tmp_path / "train.txt", images)
    assert (
        run_cli("data", "extract", "--images", train, "--list", listing, "--out", tmp_path / "train")[0] == 0
    )
    assert tree(tmp_path / "train" / "images") == {
        f"{wnid}/{name}.JPEG": data for wnid, members in images.items() for name, data in members.items()
    }
    val = tmp_path / "ILSVRC2012_img_val.tar"
    val.write_bytes(tar_bytes({f"ILSVRC2012_val_{n:08d}.JPEG": jpeg_bytes(n) for n in range(1, 5)}))
    labels = tmp_path / "val_labels.txt"
    labels.write_text(
        "".join(f"ILSVRC2012_val_{n:08d}.JPEG {'n01' if n % 2 else 'n02'}\n" for n in range(1, 5))
    )
    val_list = tmp_path / "val.txt"
    val_list.write_text(
        "n01 ILSVRC2012_val_00000001\nn02 ILSVRC2012_val_00000002\nn01 ILSVRC2012_val_00000004\n"
    )
    code, stdout, _ = run_cli(
        "data",
        "extract",
        "--images",
        val,
        "--val-labels",
        labels,
        "--list",
        val_list,
        "--out",
        tmp_path / "val",
        "--max-skipped",
        "1",
    )
    assert code == 0 and counts(stdout) == (3, 2, 1)
    assert tree(tmp_path / "val" / "images") == {
        "n01/ILSVRC2012_val_00000001.JPEG": jpeg_bytes(1),
        "n02/ILSVRC2012_val_00000002.JPEG": jpeg_bytes(2),
    }
    assert report_rows(tmp_path / "val" / "extract-report-rank0.tsv") == {
        "n01/ILSVRC2012_val_00000004.JPEG": "labelled n02 in val_labels.txt, listed as n01"
    }


def test_a_course_line_extracts_image_and_xml_under_the_image_synset_and_builds_from_them(tmp_path, run_cli):
    a, b = "n00000001", "n00000002"
    images = sample_images({a: 1, b: 2})
    archive = write_images_tar(tmp_path / "Images.tar", images)
    xml = write_annotations_tgz(tmp_path / "Annotation.tar.gz", images, folders={f"{b}_2": a})  # Annotation/a/b_2.xml
    listing = tmp_path / "list.txt"
    listing.write_text(f"{a} {a}_1\n{b} {b}_1\n{a} {b}_2\n")
    out = tmp_path / "x"
    code, stdout, _ = run_cli("data", "extract", "--images", archive, "--annotations", xml, "--list", listing,
                              "--out", out)
    assert code == 0 and counts(stdout) == (3, 3, 0)
    moved = {f"images/{b}/{b}_2.JPEG": images[b][f"{b}_2"], f"annotations/{b}/{b}_2.xml": voc_xml(a, f"{b}_2")}
    assert moved.items() <= tree(out).items()
    synsets = tmp_path / "synsets.txt"
    synsets.write_text(f"{a}\n{b}\n")
    code, stdout, stderr = run_cli("data", "build", "--images", out / "images", "--annotations", out / "annotations",
                                   "--list", listing, "--synsets", synsets, "--out", tmp_path / "r", "--shards", "1")
    assert code == 0, stderr
    assert "listed 3 = written 3 + skipped 0" in stdout and "3 with boxes" in stdout


def test_folder_input(tmp_path, run_cli, images):
    """A folder laid out like extract's output is an input too (extract -> re-extract a subset)."""
    archive = write_images_tar(tmp_path / "Images.tar", images)
    listing = write_list(tmp_path / "list.txt", images)
    assert run_cli("data", "extract", "--images", archive, "--list", listing, "--out", tmp_path / "a")[0] == 0
    subset = tmp_path / "subset.txt"
    subset.write_text("n02 n02_3\nn04 n04_1\n")
    code, stdout, _ = run_cli(
        "data", "extract", "--images", tmp_path / "a" / "images", "--list", subset, "--out", tmp_path / "b"
    )
    assert code == 0 and counts(stdout) == (2, 2, 0)
    assert tree(tmp_path / "b" / "images") == {
        "n02/n02_3.JPEG": images["n02"]["n02_3"],
        "n04/n04_1.JPEG": images["n04"]["n04_1"],
    }


@pytest.mark.slow
def test_two_workers_write_the_same_files_as_one(tmp_path, run_cli, images):
    archive = write_images_tar(tmp_path / "Images.tar", images)
    annotations = write_annotations_tgz(tmp_path / "Annotation.tar.gz", images, skip={"n03_1"})
    listing = write_list(tmp_path / "list.txt", images, ("n09 n09_1",))
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        code, stdout, _ = run_cli(
            "data",
            "extract",
            "--images",
            archive,
            "--annotations",
            annotations,
            "--list",
            listing,
            "--out",
            out,
            "--workers",
            workers,
            "--max-skipped",  # n09_1 is not in the archive on purpose
            "1",
        )
        assert code == 0 and counts(stdout) == (11, 10, 1)
        outputs.append(tree(out))
    assert outputs[0] == outputs[1]
    assert {k: v for k, v in outputs[0].items() if not k.startswith("extract-")} == expected_tree(
        images, xml_skip={"n03_1"}
    )


@pytest.mark.parametrize(
    "extra_args, message",
    [
        (("--rank", "3", "--ranks", "3"), "--rank must be in 0..2"),
        (("--ranks", "0"), "--ranks 0: must be >= 1"),
        (("--workers", "0"), "--workers 0: must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, run_cli, images, extra_args, message):
    archive = write_images_tar(tmp_path / "Images.tar", images)
    listing = write_list(tmp_path / "list.txt", images)
    code, stdout, stderr = run_cli(
        "data", "extract", "--images", archive, "--list", listing, "--out", tmp_path / "o", *extra_args
    )
    assert code == 2
    assert stderr.strip().splitlines() == [f"hpcvision: error: {stderr.split('error: ', 1)[1].strip()}"]
    assert message in stderr
    assert not (tmp_path / "o" / "images").exists()


def test_unreadable_archive_and_missing_list_exit_2_in_a_subprocess(tmp_path, hpcvision_exe, images):
    garbage = tmp_path / "Images.tar"
    garbage.write_bytes(b"\x00garbage" * 300)
    listing = write_list(tmp_path / "list.txt", images)
    env = {**os.environ, "HPCVISION_PROGRESS": "0"}
    for images_arg, list_arg, needle in [
        (garbage, listing, "Images.tar"),
        (garbage, tmp_path / "nope.txt", "nope.txt"),
    ]:
        proc = subprocess.run(
            [
                *hpcvision_exe,
                "data",
                "extract",
                "--images",
                str(images_arg),
                "--list",
                str(list_arg),
                "--out",
                str(tmp_path / "o"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpcvision: error: ") and needle in lines[0], lines


@pytest.mark.slow
def test_benchmark_quick_runs_and_prints_ratios(run_benchmark):
    code, stdout, stderr = run_benchmark("extract_throughput", "--quick")
    assert code == 0, stderr
    assert re.search(r"baseline \(sequential read.*img/s", stdout)
    for workers in (1, 2):
        assert re.search(
            rf"extract --workers {workers}: +\d+ img/s .* x baseline, [\d.]+ x write floor", stdout
        )


def test_unwritable_output_exits_2_with_one_line(tmp_path, run_cli, images):
    archive = write_images_tar(tmp_path / "Images.tar", images)
    listing = write_list(tmp_path / "list.txt", images)
    (tmp_path / "o" / "images").mkdir(parents=True)
    (tmp_path / "o" / "images" / "n01").write_bytes(b"a file where a synset folder must go")
    code, _, stderr = run_cli(
        "data", "extract", "--images", archive, "--list", listing, "--out", tmp_path / "o"
    )
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("hpcvision: error: ")
    assert "cannot write" in stderr


@pytest.mark.parametrize("where", ["mkdir", "write"])
def test_a_full_or_read_only_disk_ends_extract_in_one_line_without_leftovers(tmp_path, run_cli, images,
                                                                             monkeypatch, where):
    archive = write_images_tar(tmp_path / "Images.tar", images)
    listing = write_list(tmp_path / "list.txt", images)
    out = tmp_path / "out"
    mkdir, write_bytes = Path.mkdir, Path.write_bytes

    def read_only(self, *args, **kwargs):
        if self == out / "images":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return mkdir(self, *args, **kwargs)

    def full(self, data):
        if "/images/n02/" in str(self):
            write_bytes(self, data[:10])  # part of it went out before the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as file.write raises it: no file name
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "mkdir" if where == "mkdir" else "write_bytes", read_only if where == "mkdir" else full)
    code, _, stderr = run_cli("data", "extract", "--images", archive, "--list", listing, "--out", out)
    assert code == 2
    failed = out / "images" if where == "mkdir" else out / "images/n02/n02_1.JPEG"
    reason = os.strerror(errno.EROFS if where == "mkdir" else errno.ENOSPC)
    assert stderr.strip() == f"hpcvision: error: {failed}: cannot write: {reason}"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
