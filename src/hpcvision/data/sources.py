"""Where listed images and their XML come from, and `open_images`/`open_annotations` to pick the source.

Layouts (see shared FORMATS.md):
- a folder `DIR/<wnid>/<name>.JPEG` (what `data extract` writes under `DIR/images`);
- `Images.tar` / `ILSVRC2012_img_train.tar`: a tar of `<wnid>.tar`, each holding `<name>.JPEG`;
- `ILSVRC2012_img_val.tar`: a flat tar of `<name>.JPEG`, with a labels file giving each image's wnid;
- annotations: `DIR/<wnid>/<name>.xml` or `Annotation.tar.gz` (a tar of `<wnid>.tar.gz`, each holding
  `Annotation/<wnid>/<name>.xml`).

Annotations are served by the same sources as images, wrapped in `ListedXml`, which looks for each
image's XML in the folder its list line names (`xml_wnid`); an absent one is reported as `NO_ANNOTATION`.
A synset tar is indexed (name -> absolute offset, size) the first time one of its images is asked
for, and cached next to the outer index; after that every image is one `os.pread`.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hpcvision.data.archive import ArchiveFile
from hpcvision.data.archive_index import inner_from_json, inner_json, load_json, save_json
from hpcvision.data.lists import IMAGE_SUFFIX, WNID_RE, ListedImage, read_val_labels
from hpcvision.data.tarscan import ARCHIVE_ERRORS, Entry, Found, Missing, ScanCache, TarScan, Window, scan_tar
from hpcvision.errors import UserError

log = logging.getLogger(__name__)

XML_SUFFIX = ".xml"
NO_ANNOTATION = "no annotation"
NOT_IN_ARCHIVE = "not in archive"
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


def found_sizes(locate: Callable[[ListedImage], Entry], items: Sequence[ListedImage]) -> dict[ListedImage, int]:
    """The byte size of each item `locate` finds."""
    located = {item: locate(item) for item in items}
    return {item: entry.size for item, entry in located.items() if isinstance(entry, Found)}


def fetch_ranges(archive: ArchiveFile, ranges: list[tuple[ListedImage, int, int]]) -> Iterator[Fetched]:
    """Read members by offset; one that comes back short lies past where the archive is cut off."""
    expected = {item: size for item, _, size in ranges}
    for item, data in archive.read_ranges(ranges):
        if len(data) != expected[item]:
            yield Fetched(item, None, f"truncated archive: {item.name} cut off in {archive.path.name}")
        else:
            yield Fetched(item, data, None)


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


class FolderSource(Source):
    """`ROOT/<wnid>/<name><suffix>`; links are refused, never followed; `missing` replaces "not in archive"."""

    def __init__(self, root: Path, suffix: str, missing: str | None = None):
        self.root, self.suffix, self.missing = root, suffix, missing

    def _file(self, item: ListedImage) -> str:
        # a plain string: 3x faster than a Path for the per-file stamps of a million images
        return os.path.join(self.root, item.wnid, f"{item.name}{self.suffix}")

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
        return [file_stamp(self._file(item)) for item in items]

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

    def __init__(self, archive: ArchiveFile, inner_suffix: str, missing: str | None = None):
        self.archive, self.inner_suffix, self.missing = archive, inner_suffix, missing
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
            if isinstance(self.archive.members.get(wnid), Found) and not self._in_memory():
                self._inner_scan(wnid)

    def _inner_scan(self, wnid: str) -> TarScan | Missing:
        """The index of one synset tar: from memory, the cache, or a scan of its headers."""
        known = self._scans.get(wnid)
        if known is not None:
            return known
        if self._in_memory():
            result = self._scan_blob(wnid)
        else:
            cache = self.archive.folder / "inner" / f"{wnid}.json" if self.archive.folder else None
            cached = load_json(cache) if cache is not None else None
            if cached is not None:
                result = inner_from_json(cached)
            else:
                result = self._scan_seekable(wnid)
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
            scan = scan_tar(window, available, [self.inner_suffix], offset, label)[self.inner_suffix]
        except ARCHIVE_ERRORS as exc:
            return Missing(f"synset tar {label} unreadable ({exc})")
        if scan.truncated is None and available < size:
            scan.truncated = f"truncated archive: {label} cut off at byte {offset + available}"
        return scan

    def _scan_blob(self, wnid: str) -> TarScan | Missing:
        entry = self.archive.members[wnid]
        label = f"{wnid}{self.archive.suffix}"
        blob = self.archive.read_member(wnid)
        cut = None
        if len(blob) < entry.size:
            cut = f"truncated archive: {label} cut off at byte {entry.offset + len(blob)}"
        try:
            data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
            scan = scan_tar(io.BytesIO(data), len(data), [self.inner_suffix], 0, label)[self.inner_suffix]
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
        if isinstance(scan, Missing):
            return scan
        found = scan.entries.get(item.name)
        if found is None:
            return Missing(scan.truncated or self.missing or NOT_IN_ARCHIVE)
        return found

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        return found_sizes(self._locate, items)

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        by_synset: dict[str, list[ListedImage]] = defaultdict(list)
        for item in items:
            by_synset[item.wnid].append(item)
        for wnid in sorted(by_synset):
            yield from self._fetch_synset(wnid, by_synset[wnid])

    def _fetch_synset(self, wnid: str, items: list[ListedImage]) -> Iterator[Fetched]:
        ranges = []
        scan = self._inner_scan(wnid) if isinstance(self.archive.members.get(wnid), Found) else None
        in_memory = scan.data if isinstance(scan, TarScan) else None
        for item in items:
            entry = self._locate(item)
            if isinstance(entry, Missing):
                yield Fetched(item, None, entry.reason)
            elif in_memory is not None:
                data = in_memory[entry.offset : entry.offset + entry.size]
                if len(data) == entry.size:
                    yield Fetched(item, data, None)
                else:
                    yield Fetched(
                        item, None, f"truncated archive: {item.name} cut off in {wnid}{self.archive.suffix}"
                    )
            else:
                ranges.append((item, entry.offset, entry.size))
        yield from fetch_ranges(self.archive, ranges)


# ---------------------------------------------------------------------------------------------------
# A flat tar with a labels file


class FlatTarSource(Source):
    """A flat tar of `<name>.JPEG` (ILSVRC-2012 validation) with each image's wnid from a labels file."""

    def __init__(self, archive: ArchiveFile, labels: dict[str, str], labels_path: Path):
        self.archive, self.labels, self.labels_path = archive, labels, labels_path

    def synsets(self) -> set[str]:
        return set(self.labels.values())

    def _locate(self, item: ListedImage) -> Entry:
        label = self.labels.get(item.name)
        if label is None:
            return Missing(f"no label in {self.labels_path.name}")
        if label != item.wnid:
            return Missing(f"labelled {label} in {self.labels_path.name}, listed as {item.wnid}")
        entry = self.archive.members.get(item.name)
        if entry is None:
            return Missing(self.archive.truncated or NOT_IN_ARCHIVE)
        return entry

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        return found_sizes(self._locate, items)

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        ranges = []
        for item in items:
            entry = self._locate(item)
            if isinstance(entry, Missing):
                yield Fetched(item, None, entry.reason)
            else:
                ranges.append((item, entry.offset, entry.size))
        yield from fetch_ranges(self.archive, ranges)


# ---------------------------------------------------------------------------------------------------
# Annotations where the list says


def _at_xml_folder(item: ListedImage) -> ListedImage:
    return item if item.xml_wnid == item.wnid else replace(item, wnid=item.xml_wnid)


class ListedXml(Source):
    """Each image's XML from its list line's XML folder (`xml_wnid`), served under the image itself;
    where that has none, from the image's own synset folder, where `data extract` writes it."""

    def __init__(self, inner: Source):
        self.inner = inner

    def _moved(self, items: Sequence[ListedImage]) -> dict[ListedImage, ListedImage]:
        return {_at_xml_folder(item): item for item in items}

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
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
        # both places an item's XML may be fetched from: editing either makes its shard stale
        listed = self.inner.stamps([_at_xml_folder(item) for item in items])
        own = [item for item in items if item.xml_wnid != item.wnid]
        return listed if listed is None or not own else [listed, self.inner.stamps(own)]

    def prepare(self, items: Sequence[ListedImage]) -> None:
        self.inner.prepare(list(self._moved(items)))

    def synsets(self) -> set[str]:
        return self.inner.synsets()


# ---------------------------------------------------------------------------------------------------
# Opening


def open_images(
    path: str | Path, *, val_labels: str | Path | None = None, index_dir: str | Path | None = None
) -> Source:
    """A folder `DIR/<wnid>/<name>.JPEG`, a tar of synset tars, or a flat val tar with `val_labels`."""
    path = Path(path)
    if path.is_dir():
        return FolderSource(path, IMAGE_SUFFIX)
    if not path.exists():
        raise UserError(f"{path}: image archive not found")
    archive = ArchiveFile(path, (".tar", IMAGE_SUFFIX), Path(index_dir) if index_dir else None)
    if archive.suffix == ".tar" and archive.members:
        if val_labels is not None:
            log.warning("%s holds synset tars: ignoring --val-labels %s", path, val_labels)
        return NestedTarSource(archive, IMAGE_SUFFIX)
    if archive.suffix == IMAGE_SUFFIX and archive.members:
        if val_labels is None:
            raise UserError(
                f"{path}: flat archive of images (ILSVRC-2012 validation layout): give the labels file"
            )
        return FlatTarSource(archive, read_val_labels(val_labels), Path(val_labels))
    if archive.truncated:
        raise UserError(f"{path}: {archive.truncated}")
    raise UserError(f"{path}: holds neither <wnid>.tar synset archives nor .JPEG images")


def open_annotations(path: str | Path, *, index_dir: str | Path | None = None) -> Source:
    """A folder `DIR/<wnid>/<name>.xml` or a tar(.gz) of `<wnid>.tar.gz` holding `.../<name>.xml`, read
    where each item's list line puts its XML (`ListedXml`); one without is missing with `NO_ANNOTATION`."""
    path = Path(path)
    if path.is_dir():
        return ListedXml(FolderSource(path, XML_SUFFIX, missing=NO_ANNOTATION))
    if not path.exists():
        raise UserError(f"{path}: annotation archive not found")
    archive = ArchiveFile(path, (".tar.gz",), Path(index_dir) if index_dir else None, spill=True)
    if not archive.members and not archive.truncated:
        raise UserError(f"{path}: holds no <wnid>.tar.gz annotation archives")
    return ListedXml(NestedTarSource(archive, XML_SUFFIX, missing=NO_ANNOTATION))
