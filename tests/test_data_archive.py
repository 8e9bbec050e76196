"""Reading listed images and XML out of folders, nested tars and flat val tars; index cache; safety."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile

import pytest
from data_archives import (
    jpeg_bytes,
    sample_images,
    tar_bytes,
    voc_xml,
    write_annotations_tgz,
    write_images_tar,
)

from hpcvision.data.lists import ListedImage
from hpcvision.data.sources import NO_ANNOTATION, open_annotations, open_images
from hpcvision.data.tarscan import Found, ScanCache, TarScan, _plain_members, scan_tar, scan_tar_bytes
from hpcvision.errors import UserError


def items_of(images, line=1):
    return [ListedImage(wnid, name, line) for wnid, members in images.items() for name in members]


def fetch_all(source, items):
    """{(wnid, name): bytes or problem}; also checks every item comes back exactly once, and that
    `fetch_in_order` gives the same in the order asked (each source's own way of reading in order)."""
    results = list(source.fetch(items))
    assert sorted((f.item.wnid, f.item.name) for f in results) == sorted((i.wnid, i.name) for i in items)
    for f in results:
        assert (f.data is None) == (f.problem is not None), f
    found = {(f.item.wnid, f.item.name): (f.data if f.data is not None else f.problem) for f in results}
    in_order = list(source.fetch_in_order(items, "test"))
    assert len(in_order) == len(items) and all(f.item is item for f, item in zip(in_order, items, strict=True))
    assert {(f.item.wnid, f.item.name): (f.data if f.data is not None else f.problem) for f in in_order} == found
    return found


@pytest.fixture
def images():
    return sample_images({"n01": 3, "n02": 2, "n03": 4})


def expected_bytes(images):
    return {(wnid, name): data for wnid, members in images.items() for name, data in members.items()}


def test_nested_tar_gives_the_exact_member_bytes(tmp_path, images):
    source = open_images(write_images_tar(tmp_path / "Images.tar", images), index_dir=tmp_path / "idx")
    assert source.synsets() == {"n01", "n02", "n03"}
    assert fetch_all(source, items_of(images)) == expected_bytes(images)
    sizes = source.sizes(items_of(images))
    assert {(i.wnid, i.name): s for i, s in sizes.items()} == {
        k: len(v) for k, v in expected_bytes(images).items()
    }


def test_gzipped_outer_tar_is_read_too(tmp_path, images):
    plain = write_images_tar(tmp_path / "plain.tar", images)
    packed = tmp_path / "Images.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert fetch_all(open_images(packed), items_of(images)) == expected_bytes(images)


def test_folder_source_and_refused_symlink(tmp_path, images):
    root = tmp_path / "images"
    for wnid, members in images.items():
        (root / wnid).mkdir(parents=True)
        for name, data in members.items():
            (root / wnid / f"{name}.JPEG").write_bytes(data)
    secret = tmp_path / "secret.JPEG"
    secret.write_bytes(b"secret")
    (root / "n01" / "n01_9.JPEG").symlink_to(secret)
    source = open_images(root)
    assert source.synsets() == {"n01", "n02", "n03"}
    wanted = [
        *items_of(images),
        ListedImage("n01", "n01_9", 9),
        ListedImage("n01", "n01_7", 10),
        ListedImage("n99", "n99_1", 11),
    ]
    got = fetch_all(source, wanted)
    assert got.pop(("n01", "n01_9")) == "symlink member 'n01_9.JPEG'"
    assert got.pop(("n01", "n01_7")) == "not in archive"
    assert got.pop(("n99", "n99_1")) == "synset n99 not in archive"
    assert got == expected_bytes(images)


def test_absent_image_and_absent_synset(tmp_path, images):
    source = open_images(write_images_tar(tmp_path / "Images.tar", images))
    got = fetch_all(source, [ListedImage("n01", "n01_77", 1), ListedImage("n42", "n42_1", 2)])
    assert got == {("n01", "n01_77"): "not in archive", ("n42", "n42_1"): "synset n42 not in archive"}


def test_unsafe_members_are_refused(tmp_path, images):
    inner = tar_bytes(
        {"n05_1.JPEG": jpeg_bytes(1), "../n05_2.JPEG": b"escape", "/abs/n05_3.JPEG": b"absolute"},
        links={"n05_4.JPEG": "/etc/passwd", "n05_5.JPEG": "../../outside.JPEG"},
        specials={"n05_6.JPEG": (tarfile.LNKTYPE, "n05_1.JPEG"), "n05_7.JPEG": (tarfile.CHRTYPE, "")},
    )
    extra = {"n05.tar": inner, "../n06.tar": tar_bytes({"n06_1.JPEG": jpeg_bytes(2)})}
    source = open_images(write_images_tar(tmp_path / "Images.tar", images, extra=extra))
    wanted = [ListedImage("n05", f"n05_{n}", n) for n in range(1, 8)] + [ListedImage("n06", "n06_1", 8)]
    got = fetch_all(source, wanted)
    assert got[("n05", "n05_1")] == jpeg_bytes(1)
    assert got[("n05", "n05_2")] == "unsafe member path '../n05_2.JPEG'"
    assert got[("n05", "n05_3")] == "unsafe member path '/abs/n05_3.JPEG'"
    assert got[("n05", "n05_4")] == "symlink member 'n05_4.JPEG'"
    assert got[("n05", "n05_5")] == "symlink member 'n05_5.JPEG'"
    assert got[("n06", "n06_1")] == "unsafe member path '../n06.tar'"
    assert got[("n05", "n05_6")] == "hardlink member 'n05_6.JPEG'"
    assert got[("n05", "n05_7")] == "not a regular file 'n05_7.JPEG'"
    assert "n06" not in source.synsets()


def test_truncated_outer_tar_keeps_what_is_before_the_cut(tmp_path, images):
    path = write_images_tar(tmp_path / "Images.tar", images)
    full = path.read_bytes()
    with tarfile.open(path) as tar:
        n02 = tar.getmember("n02.tar")
    # Cut inside n02.tar, after its first image: n01 intact, n02 partly, n03 gone.
    path.write_bytes(full[: n02.offset_data + 512 + len(images["n02"]["n02_1"]) + 600])
    got = fetch_all(open_images(path, index_dir=tmp_path / "idx"), items_of(images))
    for name, data in images["n01"].items():
        assert got[("n01", name)] == data
    assert got[("n02", "n02_1")] == images["n02"]["n02_1"]
    for key in [("n02", "n02_2"), *[("n03", name) for name in images["n03"]]]:
        assert got[key].startswith("truncated archive"), (key, got[key])


def test_truncated_inner_tar(tmp_path, images):
    inner = tar_bytes({"n07_1.JPEG": jpeg_bytes(1), "n07_2.JPEG": jpeg_bytes(2)})
    cut = inner[: 512 + len(jpeg_bytes(1)) + 100]  # n07_1 whole, n07_2's data cut short
    source = open_images(write_images_tar(tmp_path / "Images.tar", images, extra={"n07.tar": cut}))
    got = fetch_all(
        source,
        [
            ListedImage("n07", "n07_1", 1),
            ListedImage("n07", "n07_2", 2),
            ListedImage("n07", "n07_3", 3),
            ListedImage("n01", "n01_1", 4),
        ],
    )
    assert got[("n07", "n07_1")] == jpeg_bytes(1)
    assert got[("n07", "n07_2")].startswith("truncated archive")
    assert got[("n07", "n07_3")].startswith("truncated archive")
    assert got[("n01", "n01_1")] == images["n01"]["n01_1"]


def test_inner_member_that_is_not_a_tar(tmp_path, images):
    source = open_images(write_images_tar(tmp_path / "Images.tar", images, extra={"n08.tar": b"x" * 2000}))
    got = fetch_all(source, [ListedImage("n08", "n08_1", 1)])
    assert got[("n08", "n08_1")].startswith("synset tar n08.tar unreadable")


@pytest.mark.parametrize("content", [b"", b"this is not a tar archive" * 40, None])
def test_unreadable_archive_is_a_user_error(tmp_path, content):
    path = tmp_path / "Images.tar"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        open_images(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_second_open_uses_the_cached_index_and_a_changed_archive_invalidates_it(tmp_path, images):
    path = write_images_tar(tmp_path / "Images.tar", images)
    index = tmp_path / "idx"
    items = items_of(images)
    assert fetch_all(open_images(path, index_dir=index), items) == expected_bytes(images)
    # Wipe every tar header (outer and inner) but keep size and mtime: only the cache knows the offsets.
    stat = path.stat()
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as outer:
        header_offsets = [m.offset for m in outer.getmembers()]
        for member in outer.getmembers():
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                header_offsets += [member.offset_data + m.offset for m in inner.getmembers()]
    for offset in header_offsets:
        data[offset : offset + 512] = b"\xee" * 512
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fetch_all(open_images(path, index_dir=index), items) == expected_bytes(images)
    with pytest.raises(UserError):  # without the cache the wiped archive is unreadable: the cache was used
        open_images(path)
    # A new archive at the same path (other size and mtime) is indexed afresh.
    changed = sample_images({"n04": 2})
    write_images_tar(path, changed)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    source = open_images(path, index_dir=index)
    assert source.synsets() == {"n04"}
    assert fetch_all(source, items_of(changed)) == expected_bytes(changed)


def test_source_survives_pickling_for_spawned_workers(tmp_path, images):
    source = open_images(write_images_tar(tmp_path / "Images.tar", images), index_dir=tmp_path / "idx")
    list(source.fetch(items_of(images)[:1]))  # opens a descriptor, which must not travel
    clone = pickle.loads(pickle.dumps(source))
    assert fetch_all(clone, items_of(images)) == expected_bytes(images)


def test_flat_val_tar_with_labels(tmp_path):
    members = {f"ILSVRC2012_val_{n:08d}.JPEG": jpeg_bytes(n) for n in (1, 2, 3)}
    path = tmp_path / "ILSVRC2012_img_val.tar"
    path.write_bytes(tar_bytes(members))
    pairs = tmp_path / "labels.txt"
    pairs.write_text("ILSVRC2012_val_00000001.JPEG n01\nILSVRC2012_val_00000002.JPEG n02\n")
    source = open_images(path, val_labels=pairs)
    assert source.synsets() == {"n01", "n02"}
    got = fetch_all(
        source,
        [
            ListedImage("n01", "ILSVRC2012_val_00000001", 1),
            ListedImage("n01", "ILSVRC2012_val_00000002", 2),
            ListedImage("n01", "ILSVRC2012_val_00000003", 3),
        ],
    )
    assert got[("n01", "ILSVRC2012_val_00000001")] == jpeg_bytes(1)
    assert got[("n01", "ILSVRC2012_val_00000002")] == "labelled n02 in labels.txt, listed as n01"
    assert got[("n01", "ILSVRC2012_val_00000003")] == "no label in labels.txt"
    # inception's one-wnid-a-line form: line k labels ILSVRC2012_val_0000000k
    ordered = tmp_path / "synset_labels.txt"
    ordered.write_text("n05\nn06\nn07\n")
    got = fetch_all(open_images(path, val_labels=ordered), [ListedImage("n07", "ILSVRC2012_val_00000003", 1)])
    assert got == {("n07", "ILSVRC2012_val_00000003"): jpeg_bytes(3)}


def test_flat_tar_without_labels_or_with_bad_labels_is_a_user_error(tmp_path):
    path = tmp_path / "val.tar"
    path.write_bytes(tar_bytes({"ILSVRC2012_val_00000001.JPEG": jpeg_bytes(1)}))
    other = tmp_path / "other.tar"
    other.write_bytes(tar_bytes({"photo_1.JPEG": jpeg_bytes(1)}))
    with pytest.raises(UserError, match="not ILSVRC-2012 validation images: give their labels with --val-labels"):
        open_images(other)
    bad = tmp_path / "labels.txt"
    bad.write_text("a b c\n")
    with pytest.raises(UserError, match=r"labels.txt:1"):
        open_images(path, val_labels=bad)


def test_annotations_from_tar_gz_and_folder(tmp_path, images):
    tgz = write_annotations_tgz(tmp_path / "Annotation.tar.gz", images, skip={"n01_2"})
    wanted = [*items_of(images), ListedImage("n77", "n77_1", 1)]
    expected = {(i.wnid, i.name): voc_xml(i.wnid, i.name) for i in items_of(images)}
    expected[("n01", "n01_2")] = NO_ANNOTATION
    expected[("n77", "n77_1")] = NO_ANNOTATION
    source = open_annotations(tgz, index_dir=tmp_path / "idx")
    assert source.synsets() == {"n01", "n02", "n03"}
    assert fetch_all(source, wanted) == expected
    folder = tmp_path / "annotations"
    for (wnid, name), xml in expected.items():
        if xml != NO_ANNOTATION:
            (folder / wnid).mkdir(parents=True, exist_ok=True)
            (folder / wnid / f"{name}.xml").write_bytes(xml)
    assert fetch_all(open_annotations(folder), wanted) == expected


def test_annotation_archive_unsafe_and_truncated(tmp_path):
    inner = tar_bytes(
        {"Annotation/n01/n01_1.xml": voc_xml("n01", "n01_1"), "../../n01_2.xml": b"<x/>"}, mode="w:gz"
    )
    path = tmp_path / "Annotation.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes({"n01.tar.gz": inner, "n02.tar.gz": inner[: len(inner) // 2]})))
    got = fetch_all(
        open_annotations(path),
        [ListedImage("n01", "n01_1", 1), ListedImage("n01", "n01_2", 2), ListedImage("n02", "n02_1", 3)],
    )
    assert got[("n01", "n01_1")] == voc_xml("n01", "n01_1")
    assert got[("n01", "n01_2")] == "unsafe member path '../../n01_2.xml'"
    assert got[("n02", "n02_1")].startswith("synset tar n02.tar.gz unreadable")
    garbage = tmp_path / "bad.tar.gz"
    garbage.write_bytes(gzip.compress(b"not a tar" * 100))
    with pytest.raises(UserError, match="bad.tar.gz"):
        open_annotations(garbage)


def test_prepare_indexes_the_needed_synset_tars_on_disk(tmp_path, images):
    index = tmp_path / "idx"
    source = open_images(write_images_tar(tmp_path / "Images.tar", images), index_dir=index)
    source.prepare(
        [ListedImage("n01", "n01_1", 1), ListedImage("n03", "n03_9", 2), ListedImage("n42", "x", 3)]
    )
    assert sorted(p.name for p in index.glob("*/inner/*.json")) == ["n01.json", "n03.json"]


def test_scan_cache_keeps_recent_indexes_within_its_entry_budget():
    cache = ScanCache(max_entries=25, max_in_memory_tars=1)
    scan = {w: TarScan({f"{w}_{i}": Found(i, 1) for i in range(10)}, None) for w in ("a", "b", "c")}
    cache.put("a", scan["a"])
    cache.put("b", scan["b"])
    assert cache.get("a") is scan["a"]  # now most recent: b is the oldest
    cache.put("c", scan["c"])
    assert cache.get("b") is None and cache.get("a") is scan["a"] and cache.get("c") is scan["c"]
    assert cache.entries == 22
    cache.put("d", TarScan({}, None, data=b"tar"))
    cache.put("e", TarScan({}, None, data=b"tar"))
    assert cache.get("d") is None and cache.tars == 1


def test_truncated_annotation_archive_keeps_the_synsets_before_the_cut(tmp_path):
    images = sample_images({f"n{k:02d}": 30 for k in range(1, 7)})
    path = write_annotations_tgz(tmp_path / "Annotation.tar.gz", images)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    source = open_annotations(path)
    got = fetch_all(source, items_of(images))
    assert got[("n01", "n01_1")] == voc_xml("n01", "n01_1")
    assert got[("n06", "n06_30")].startswith("truncated archive"), got[("n06", "n06_30")]
    assert all(value == voc_xml(*key) or value.startswith("truncated archive") for key, value in got.items())


def test_gzipped_annotations_are_decompressed_once(tmp_path, images):
    """gzip has no random access: the synset archives are kept while indexing, never re-read."""
    path = write_annotations_tgz(tmp_path / "Annotation.tar.gz", images)
    expected = {(i.wnid, i.name): voc_xml(i.wnid, i.name) for i in items_of(images)}
    stat = path.stat()
    in_memory = open_annotations(path)
    cached = open_annotations(path, index_dir=tmp_path / "idx")
    path.write_bytes(b"\0" * stat.st_size)  # any later read of the archive would find garbage
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fetch_all(in_memory, items_of(images)) == expected
    assert fetch_all(pickle.loads(pickle.dumps(cached)), items_of(images)) == expected
    assert fetch_all(open_annotations(path, index_dir=tmp_path / "idx"), items_of(images)) == expected


def test_an_unwritable_index_folder_only_costs_speed(tmp_path, images):
    """Indexes, and the annotation archives kept while reading a gzip, fall back to memory."""
    blocked = tmp_path / "idx"
    blocked.write_text("a file where the index folder should be")
    tgz = write_annotations_tgz(tmp_path / "Annotation.tar.gz", images)
    expected = {(i.wnid, i.name): voc_xml(i.wnid, i.name) for i in items_of(images)}
    assert fetch_all(open_annotations(tgz, index_dir=blocked), items_of(images)) == expected
    source = open_images(write_images_tar(tmp_path / "Images.tar", images), index_dir=blocked)
    assert fetch_all(source, items_of(images)) == expected_bytes(images)


def test_the_cached_index_keeps_the_reasons(tmp_path, images):
    inner = tar_bytes({"n05_1.JPEG": jpeg_bytes(1), "../n05_2.JPEG": b"escape"})
    extra = {"n05.tar": inner, "n08.tar": b"x" * 2000, "../n06.tar": tar_bytes({"n06_1.JPEG": jpeg_bytes(2)})}
    path = write_images_tar(tmp_path / "Images.tar", images, extra=extra)
    wanted = [ListedImage("n05", "n05_1", 1), ListedImage("n05", "n05_2", 2), ListedImage("n08", "n08_1", 3),
              ListedImage("n06", "n06_1", 4), ListedImage("n01", "n01_1", 5)]
    first = fetch_all(open_images(path, index_dir=tmp_path / "idx"), wanted)
    assert sorted(p.name for p in (tmp_path / "idx").glob("*/inner/*.json")) == ["n01.json", "n05.json", "n08.json"]
    assert fetch_all(open_images(path, index_dir=tmp_path / "idx"), wanted) == first
    assert first[("n05", "n05_2")] == "unsafe member path '../n05_2.JPEG'"
    assert first[("n06", "n06_1")] == "unsafe member path '../n06.tar'"
    assert first[("n08", "n08_1")].startswith("synset tar n08.tar unreadable")


def _tar_bytes(members: list[tuple[str, bytes | None, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of (name, data or None for a directory, type) members, in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "elsewhere.xml"
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


PLAIN = [("Annotation/n01/n01_1.xml", b"<a/>", tarfile.REGTYPE), ("Annotation/n01/n01_2.XML", b"x" * 513, tarfile.REGTYPE),
         ("Annotation/n01/notes.txt", b"?", tarfile.REGTYPE), ("n01_3.xml", b"", tarfile.REGTYPE)]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("case", ["plain", "unsafe", "unsafe long name", "dir", "symlink", "long name", "truncated", "cut header",
                                  "garbage after", "not a tar", "empty", "non-ascii"])
def test_reading_headers_of_an_in_memory_tar_gives_what_tarfile_gives(case, fmt):
    members = list(PLAIN)
    if case == "unsafe":
        members.append(("../n01_4.xml", b"<b/>", tarfile.REGTYPE))
    if case == "dir":
        members.insert(1, ("Annotation/n01", None, tarfile.DIRTYPE))
    if case == "symlink":
        members.append(("n01_5.xml", None, tarfile.SYMTYPE))
    if case == "long name":
        members.append(("A" * 90 + "/" + "b" * 60 + "/n01_6.xml", b"<c/>", tarfile.REGTYPE))
    if case == "unsafe long name":  # ustar puts ../ in the name prefix
        members.append(("../" + "a" * 120 + "/n01_7.xml", b"<e/>", tarfile.REGTYPE))
    if case == "non-ascii":
        members.append(("Annotation/n01/n01_é.xml", b"<d/>", tarfile.REGTYPE))
    data = _tar_bytes(members, fmt) if case not in ("not a tar", "empty") else b"x" * 2048 * (case != "empty")
    if case == "truncated":
        data = data[:1536 + 100]  # inside the second member's data
    if case == "cut header":
        data = data[:1024 + 200]
    if case == "garbage after":
        data = data.rstrip(b"\0") + b"\0" * 512 + b"junk" * 128
    reference = None
    try:
        reference = scan_tar(io.BytesIO(data), len(data), (".xml", ".txt"), 0, "n01.tar.gz")
    except tarfile.ReadError:
        with pytest.raises(tarfile.ReadError):
            scan_tar_bytes(data, (".xml", ".txt"), "n01.tar.gz")
        return
    assert scan_tar_bytes(data, (".xml", ".txt"), "n01.tar.gz") == reference
    if case == "plain":  # the fast reader answered, not tarfile
        assert _plain_members(data, (".xml", ".txt")) == {s: reference[s].entries for s in reference}


@pytest.mark.parametrize("fill", [0, 255, None])
def test_a_header_sum_is_the_sum_of_its_bytes(fill):
    import os

    from hpcvision.data.tarscan import header_sum

    header = os.urandom(512) if fill is None else bytes([fill]) * 512
    assert header_sum(header) == sum(header)


def test_annotation_synset_indexes_are_cached_and_give_the_same_members(tmp_path, images, monkeypatch):
    """The in-memory annotation tars are indexed on disk too; a later source scans none and reads the same."""
    from hpcvision.data import sources

    tgz = write_annotations_tgz(tmp_path / "Annotation.tar.gz", images, skip={"n01_2"})
    wanted = [*items_of(images), ListedImage("n77", "n77_1", 1)]
    first = open_annotations(tgz, index_dir=tmp_path / "idx")
    first.prepare(wanted)
    assert sorted(p.name for p in (tmp_path / "idx").glob("*/inner/*.json")) == ["n01.json", "n02.json", "n03.json"]
    expected = fetch_all(first, wanted)
    monkeypatch.setattr(sources, "scan_tar_bytes", lambda *a: pytest.fail("scanned again"))
    assert fetch_all(open_annotations(tgz, index_dir=tmp_path / "idx"), wanted) == expected
    assert expected[("n01", "n01_2")] == NO_ANNOTATION and expected[("n01", "n01_1")] == voc_xml("n01", "n01_1")
