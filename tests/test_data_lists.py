"""File lists, synset lists, metadata and validation labels: accepted formats and every bad line."""

from __future__ import annotations

import pytest

from hpcvision.data.lists import ListedImage, read_file_list, read_metadata, read_synsets, read_val_labels
from hpcvision.errors import UserError


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_course_format_with_and_without_suffix(tmp_path):
    path = write(tmp_path, "train.txt", "n01440764 n01440764_10026\nn01443537 n01443537_2.JPEG\r\n\n")
    files = read_file_list(path)
    assert files.images == [
        ListedImage("n01440764", "n01440764_10026", 1),
        ListedImage("n01443537", "n01443537_2", 2),
    ]
    assert files.skipped == []
    assert files.listed == 2


def test_val_layout_and_relative_path_form(tmp_path):
    path = write(tmp_path, "val.txt", "n01751748 ILSVRC2012_val_00000001\nn09193705/ILSVRC2012_val_00000002.JPEG\n")
    files = read_file_list(path)
    assert [(i.wnid, i.name) for i in files.images] == [
        ("n01751748", "ILSVRC2012_val_00000001"),
        ("n09193705", "ILSVRC2012_val_00000002"),
    ]


def test_an_imagenet_name_gives_the_image_synset_and_column_1_the_xml_folder(tmp_path):
    text = (
        "n03636649 n04065464_94\n"  # the course's own: image of n04065464, XML under Annotation/n03636649/
        "n04065464 n04065464_94.JPEG\n"  # the same image again
        "n01751748 ILSVRC2012_val_00000001\n"  # no synset in the name: column 1 is the image's synset
        "n04065464/n04065464_95.JPEG\n"
    )
    files = read_file_list(write(tmp_path, "l.txt", text), synsets=["n04065464", "n01751748"])
    assert [(i.wnid, i.name, i.xml_wnid) for i in files.images] == [
        ("n04065464", "n04065464_94", "n03636649"),
        ("n01751748", "ILSVRC2012_val_00000001", "n01751748"),
        ("n04065464", "n04065464_95", "n04065464"),
    ]
    assert files.skipped == [("n04065464 n04065464_94.JPEG", "duplicate of line 1")]


def test_duplicates_unknown_and_malformed_are_skipped_with_reasons(tmp_path):
    text = (
        "n1 n1_1\n"
        "n1 n1_1.JPEG\n"  # same image as line 1
        "n9 n9_1\n"  # not in synsets
        "n1\n"  # one field
        "n1 ../../etc/passwd\n"  # path traversal attempt
        "n1 n1_2 extra\n"
        "../n1 n1_3\n"
        "n2 n2_1\n"
    )
    files = read_file_list(write(tmp_path, "l.txt", text), synsets=["n1", "n2"])
    assert [(i.wnid, i.name, i.line) for i in files.images] == [("n1", "n1_1", 1), ("n2", "n2_1", 8)]
    reasons = dict(files.skipped)
    assert reasons["n1 n1_1.JPEG"] == "duplicate of line 1"
    assert reasons["n9 n9_1"] == "unknown synset n9"
    for entry in ("n1", "n1 ../../etc/passwd", "n1 n1_2 extra", "../n1 n1_3"):
        assert reasons[entry].startswith("malformed line:"), entry
    assert files.listed == len(files.images) + len(files.skipped) == 8


def test_without_synsets_every_wellformed_line_is_kept(tmp_path):
    files = read_file_list(write(tmp_path, "l.txt", "n9 n9_1\n"))
    assert [i.wnid for i in files.images] == ["n9"]


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), (b"\xff\xfe\xfa bad", "not UTF-8")],
)
def test_unreadable_list_is_a_user_error(tmp_path, content, message):
    path = tmp_path / "list.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        read_file_list(path)
    assert str(path) in str(info.value)


def test_synsets_in_order(tmp_path):
    assert read_synsets(write(tmp_path, "s.txt", "\ufeffn2\nn1\n\nn3 \n")) == ["n2", "n1", "n3"]


@pytest.mark.parametrize(
    "text, message",
    [("n1\nn2\nn1\n", r"s.txt:3: synset n1 already on line 1"), ("n1\nn2 x\n", r"s.txt:2: expected"), ("\n", "empty")],
)
def test_bad_synsets(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_synsets(write(tmp_path, "s.txt", text))


def test_metadata(tmp_path):
    text = "n02119477\tred fox, Vulpes fulva\nn01440764\ttench, Tinca tinca\n"
    assert read_metadata(write(tmp_path, "m.txt", text)) == {
        "n02119477": "red fox, Vulpes fulva",
        "n01440764": "tench, Tinca tinca",
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("n1 fish\n", r"m.txt:1: expected"),
        ("n1\tfish\nn2\ta\tb\n", r"m.txt:2: expected"),
        ("n1\tfish\nn1\tcarp\n", r"m.txt:2: synset n1 already on line 1"),
        ("../x\tfish\n", r"m.txt:1: bad synset id"),
    ],
)
def test_bad_metadata(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_metadata(write(tmp_path, "m.txt", text))


def test_validation_labels_in_both_forms(tmp_path):
    pairs = write(tmp_path, "pairs.txt", "\ufeffILSVRC2012_val_00000001.JPEG n01\nsub/ILSVRC2012_val_00000002.jpeg n02\n\n")
    assert read_val_labels(pairs) == {"ILSVRC2012_val_00000001": "n01", "ILSVRC2012_val_00000002": "n02"}
    ordered = write(tmp_path, "ordered.txt", "n05\nn06\n")
    assert read_val_labels(ordered) == {"ILSVRC2012_val_00000001": "n05", "ILSVRC2012_val_00000002": "n06"}


@pytest.mark.parametrize(
    "text, message",
    [("a b c\n", r"labels.txt:1: expected '<filename> <wnid>'"), ("x.JPEG ../n01\n", r"labels.txt:1: bad synset id"),
     ("\n\n", "no validation labels")],
)
def test_bad_validation_labels(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_val_labels(write(tmp_path, "labels.txt", text))
    with pytest.raises(UserError, match="cannot read validation labels"):
        read_val_labels(tmp_path / "absent.txt")


PLAIN_LISTS = [
    "n01440764 n01440764_10026\nn03636649 n04065464_94\n",            # the course's: XML of another synset
    "n01440764 n01440764_1.JPEG\r\nn01443537\tn01443537_2.jpg\r\n",   # suffixes, CRLF, a tab
    "n01440764 n01440764_1\nn01443537 n01443537_2",                   # no final newline
    "",
]
LINE_BY_LINE = [
    "n01440764 n01440764_1\nn01440764 n01440764_1.JPEG\n",           # a duplicate once the suffix is gone
    "n01440764 n01440764_1\n\n  n01443537 n01443537_2  \n",           # a blank line, spaces around
    "n01440764 ILSVRC2012_val_00000001\nn01440764 n01440764_1\n",     # a name without a synset
    "n01440764 n01440764_1 extra\n",                                  # three fields
]


@pytest.mark.parametrize("text", PLAIN_LISTS + LINE_BY_LINE)
@pytest.mark.parametrize("known", [None, {"n01440764"}])
def test_bulk_parsing_of_plain_lists_gives_what_line_by_line_parsing_gives(tmp_path, text, known):
    from hpcvision.data.lists import _parse_lines, _plain_list

    path = tmp_path / "list.txt"
    path.write_bytes(text.encode())
    bulk, by_line = _plain_list(text), _parse_lines(text)
    assert (bulk is not None) == (text in PLAIN_LISTS)
    assert bulk is None or bulk == by_line
    parsed = read_file_list(path, known)
    lines = [line.strip() for line in text.splitlines()]
    assert parsed.images == [item for item in by_line.images if known is None or item.wnid in known]
    assert parsed.skipped == by_line.skipped + [(lines[item.line - 1], f"unknown synset {item.wnid}")
                                                for item in by_line.images if known and item.wnid not in known]
    assert parsed.listed == len(parsed.images) + len(parsed.skipped)
