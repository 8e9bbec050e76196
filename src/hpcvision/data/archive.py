"""Read listed images and their XML straight out of ImageNet archives, without unpacking them.

Layouts (see shared FORMATS.md):
- a folder `DIR/<wnid>/<name>.JPEG` (what `data extract` writes under `DIR/images`);
- `Images.tar` / `ILSVRC2012_img_train.tar`: a tar of `<wnid>.tar`, each holding `<name>.JPEG`;
- `ILSVRC2012_img_val.tar`: a flat tar of `<name>.JPEG`, with a labels file giving each image's wnid;
- annotations: `DIR/<wnid>/<name>.xml` or `Annotation.tar.gz` (a tar of `<wnid>.tar.gz`, each holding
  `Annotation/<wnid>/<name>.xml`).

The real `Images.tar` is over 1 TB, so the outer tar's member headers are scanned once and the result
(wnid -> offset, size of its inner tar) is cached as JSON under `index_dir`, keyed by the archive's
path, size and mtime. An inner tar is indexed (name -> absolute offset, size) the first time one of
its images is asked for, and cached too; after that every image is one `os.pread`.

Member names are never used as output paths; still, members with `..`, absolute paths, links or
devices are refused and reported, so a hostile archive cannot smuggle data under a listed name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import posixpath
import secrets
import stat
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcvision.data.lists import WNID_RE, ListedImage, strip_image_suffix
from hpcvision.errors import UserError

log = logging.getLogger(__name__)

INDEX_VERSION = 2
IMAGE_SUFFIX = ".JPEG"
XML_SUFFIX = ".xml"
NO_ANNOTATION = "no annotation"
NOT_IN_ARCHIVE = "not in archive"
# Synset-tar index entries a source keeps in memory (~250 bytes each); ILSVRC-2012 train has 1.28 M.
INNER_INDEX_ENTRIES = 1_500_000
# Errors that mean "the bytes of this archive end early or are garbage".
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)

# An index entry: [absolute data offset, size] of a usable member, or the reason it is unusable.
Entry = list[int] | str
KeepMember = Callable[[str, bytes], None]


@dataclass
class Fetched:
    """One listed item with its member's bytes, or `data=None` and why not."""

    item: ListedImage
    data: bytes | None
    problem: str | None


# ---------------------------------------------------------------------------------------------------
# Member names and tar scanning


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be used (unsafe path, link, device, sparse), or None if it is fine."""
    name = info.name
    if name.startswith("/") or posixpath.isabs(name):
        return f"unsafe member path {name!r}"
    if ".." in name.split("/"):
        return f"unsafe member path {name!r}"
    if info.issym():
        return f"symlink member {name!r}"
    if info.islnk():
        return f"hardlink member {name!r}"
    if info.issparse():
        return f"sparse member {name!r}"
    if not info.isfile():
        return f"not a regular file {name!r}"
    return None


def member_key(name: str, suffix: str) -> str | None:
    """The lookup key of a member: its basename without `suffix` (case-insensitive), else None."""
    base = posixpath.basename(name.rstrip("/"))
    if not base.lower().endswith(suffix.lower()) or len(base) == len(suffix):
        return None
    return base[: -len(suffix)]


def put_entry(entries: dict[str, Entry], key: str, entry: Entry) -> None:
    """Record a member; a usable member wins over a refused one of the same key (later usable wins)."""
    if isinstance(entry, str) and isinstance(entries.get(key), list):
        return
    entries[key] = entry


class Window(io.RawIOBase):
    """A read-only, seekable view of bytes [start, start+length) of a file descriptor (via pread)."""

    def __init__(self, fd: int, start: int, length: int):
        super().__init__()
        self.fd, self.start, self.length, self.pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def read(self, size: int = -1) -> bytes:
        end = self.length if size is None or size < 0 else min(self.length, self.pos + size)
        if end <= self.pos:
            return b""
        data = os.pread(self.fd, end - self.pos, self.start + self.pos)
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass
class TarScan:
    """What a scan of one tar found: its members by key, and how it ended."""

    entries: dict[str, Entry]
    truncated: str | None  # None when the tar ends cleanly
    data: bytes | None = None  # the whole tar, when read into memory (entries then index into it)


def scan_tar(
    fileobj, size: int | None, suffixes: Sequence[str], base: int, label: str, keep: KeepMember | None = None
) -> dict[str, TarScan]:
    """Index a tar's members by suffix: {suffix: key -> [base + data offset, size] or a refusal}.

    `size` is the bytes available (None when unknown, e.g. gzip); `label` names the tar in messages;
    `keep(name, bytes)` receives each usable member's bytes, read in passing (for gzip streams).
    Raises tarfile.ReadError when the data is not a tar at all.
    """
    tar = tarfile.open(fileobj=fileobj, mode="r:")
    entries: dict[str, dict[str, Entry]] = {suffix: {} for suffix in suffixes}
    truncated = None
    while True:
        try:
            info = tar.next()
        except ARCHIVE_ERRORS as exc:
            truncated = f"truncated archive: {label} unreadable after byte {tar.offset} ({exc})"
            break
        if info is None:
            truncated = end_problem(fileobj, tar.offset, size, label)
            break
        tar.members.clear()  # tarfile keeps every TarInfo; the 1 TB archive has millions
        for suffix in suffixes:
            key = member_key(info.name, suffix)
            if key is not None:
                break
        else:
            continue
        problem = member_problem(info)
        if size is not None and info.offset_data + info.size > size:
            # Kept: the part before the cut may still be usable (an inner tar's first images);
            # readers check every member's length.
            truncated = f"truncated archive: {label} ends inside {info.name!r}"
        put_entry(entries[suffix], key, problem if problem else [base + info.offset_data, info.size])
        if keep is not None and problem is None:
            try:
                keep(f"{key}{suffix}", tar.extractfile(info).read())
            except ARCHIVE_ERRORS as exc:
                truncated = f"truncated archive: {label} unreadable inside {info.name!r} ({exc})"
                break
    return {suffix: TarScan(found, truncated) for suffix, found in entries.items()}


def end_problem(fileobj, offset: int, size: int | None, label: str) -> str | None:
    """None if the tar ends properly at `offset` (end-of-archive block or end of data), else why not."""
    if size is not None and offset >= size:
        return None
    try:
        fileobj.seek(offset)
        block = fileobj.read(tarfile.BLOCKSIZE)
    except ARCHIVE_ERRORS as exc:
        return f"truncated archive: {label} unreadable at byte {offset} ({exc})"
    if len(block) < tarfile.BLOCKSIZE:
        return f"truncated archive: {label} ends at byte {offset + len(block)}"
    if block.count(0) != len(block):
        return f"truncated archive: {label} has a corrupt member header at byte {offset}"
    return None


# ---------------------------------------------------------------------------------------------------
# The on-disk index cache


def archive_stamp(path: Path) -> dict:
    """What identifies an archive's content cheaply: its real path, size and mtime."""
    info = path.stat()
    return {"archive": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def index_folder(index_dir: Path, stamp: dict) -> Path:
    """The cache folder of one archive version: `<index_dir>/<name>-<hash of stamp>`."""
    digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
    return index_dir / f"{Path(stamp['archive']).name}-{digest}"


def load_json(path: Path) -> dict | None:
    """A cached index file, or None when absent or unreadable (it is then rebuilt)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == INDEX_VERSION else None


def temporary_name(name: str) -> str:
    """A hidden sibling name no other process uses, even one with the same pid on another node."""
    return f".{name}.tmp{os.getpid()}-{secrets.token_hex(4)}"


def save_json(path: Path, data: dict) -> None:
    """Write atomically: ranks sharing a file system may write the same index at the same time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(temporary_name(path.name))
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache location only costs speed
        log.warning("cannot cache archive index at %s: %s", path, exc)


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


# ---------------------------------------------------------------------------------------------------
# Archive files: scanning the outer tar and reading byte ranges


class ArchiveFile:
    """An outer tar (plain or gzip) with its cached member index; reads member bytes by offset.

    gzip has no random access, so with `spill` the members of a gzipped outer tar (small per-synset
    annotation archives) are kept while it is indexed: as files in the index folder, else in memory.
    """

    def __init__(self, path: Path, suffixes: Sequence[str], index_dir: Path | None, spill: bool = False):
        self.path = path
        self.spilled: dict[str, bytes] = {}
        try:
            self.stamp = archive_stamp(path)
            self.gzipped = is_gzip(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot read archive: {exc.strerror or exc}") from None
        self.folder = index_folder(index_dir, self.stamp) if index_dir is not None else None
        self.spill = spill and self.gzipped
        self.index = self._load_or_scan(suffixes)
        self.gzipped, self.spill = self.index["gzipped"], spill and self.index["gzipped"]
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None  # descriptors do not cross process boundaries
        return state

    def _load_or_scan(self, suffixes: Sequence[str]) -> dict:
        cache = self.folder / "outer.json" if self.folder is not None else None
        if cache is not None:
            cached = load_json(cache)
            if cached is not None and cached.get("stamp") == self.stamp:
                log.debug("archive index of %s read from %s", self.path, cache)
                return cached
        index = self._scan(suffixes)
        if cache is not None:
            save_json(cache, index)
            log.info("indexed %s (%d members) -> %s", self.path, len(index["members"]), cache)
        return index

    def _scan(self, suffixes: Sequence[str]) -> dict:
        """One pass over the outer tar's headers (seeking over member data, unless gzip)."""
        try:
            if self.gzipped:
                keep = self._keep_member if self.spill else None
                with gzip.open(self.path, "rb") as stream:
                    scans = scan_tar(stream, None, suffixes, 0, self.path.name, keep)
            else:
                with open(self.path, "rb", buffering=0) as raw:
                    scans = scan_tar(raw, self.stamp["size"], suffixes, 0, self.path.name)
        except tarfile.ReadError as exc:
            raise UserError(f"{self.path}: not a readable tar archive ({exc})") from None
        except ARCHIVE_ERRORS as exc:
            raise UserError(f"{self.path}: cannot read archive: {exc}") from None
        # The layout is the suffix with members; the first given wins a tie (e.g. both empty).
        suffix = next((s for s in suffixes if scans[s].entries), suffixes[0])
        return {
            "version": INDEX_VERSION,
            "stamp": self.stamp,
            "suffix": suffix,
            "gzipped": self.gzipped,
            "members": scans[suffix].entries,
            "truncated": scans[suffix].truncated,
        }

    def _keep_member(self, name: str, data: bytes) -> None:
        if self.folder is None:
            self.spilled[name] = data
            return
        target = self.folder / "members" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(temporary_name(name))
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def read_member(self, key: str) -> bytes:
        """The bytes of member `key` (e.g. a wnid): kept while indexing, else read at its offset."""
        name = f"{key}{self.suffix}"
        if name in self.spilled:
            return self.spilled[name]
        if self.spill and self.folder is not None:
            with contextlib.suppress(OSError):
                return (self.folder / "members" / name).read_bytes()
        offset, size = self.members[key]
        return self.read(offset, size)

    @property
    def members(self) -> dict[str, Entry]:
        return self.index["members"]

    @property
    def suffix(self) -> str:
        return self.index["suffix"]

    @property
    def truncated(self) -> str | None:
        return self.index["truncated"]

    def fd(self) -> int:
        """This process's read-only descriptor of the archive (opened on first use)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read_ranges(self, ranges: Iterable[tuple[object, int, int]]) -> Iterator[tuple[object, bytes]]:
        """(tag, offset, size) -> (tag, bytes), in offset order; short bytes mean the archive ends early."""
        ordered = sorted(ranges, key=lambda r: r[1])
        if not self.gzipped:
            for tag, offset, size in ordered:
                yield tag, os.pread(self.fd(), size, offset)
            return
        # gzip has no random access: one forward pass, decompressing over the gaps.
        with gzip.open(self.path, "rb") as stream:
            for tag, offset, size in ordered:
                try:
                    stream.seek(offset)
                    yield tag, stream.read(size)
                except ARCHIVE_ERRORS:
                    yield tag, b""

    def read(self, offset: int, size: int) -> bytes:
        """The bytes [offset, offset + size) of the (decompressed) archive; fewer if it ends early."""
        return next(self.read_ranges([(None, offset, size)]))[1]


# ---------------------------------------------------------------------------------------------------
# Sources


class ImageSource:
    """Where listed images come from; `fetch` yields every item once with bytes or a problem."""

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        """Yield every item exactly once (any order) with its bytes or the problem."""
        raise NotImplementedError

    def synsets(self) -> set[str]:
        """The synsets this source holds."""
        raise NotImplementedError

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        """Byte sizes of the items that can be fetched (lets extract skip copies already in place)."""
        raise NotImplementedError

    def prepare(self, items: Sequence[ListedImage]) -> None:
        """Index every synset tar `items` need, caching it on disk; call in the parent before starting
        workers that each touch many synsets, so they do not all scan the same tars."""


class AnnotationSource(ImageSource):
    """Where the PASCAL-VOC XML of listed images comes from; a missing one is `NO_ANNOTATION`."""


def check_member_file(path: Path) -> tuple[int | None, str | None]:
    """(size, None) for a regular file; (None, problem) for a link, a non-file or a missing file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None, NOT_IN_ARCHIVE
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return None, f"symlink member {path.name!r}"
    if not stat.S_ISREG(info.st_mode):
        return None, f"not a regular file {path.name!r}"
    return info.st_size, None


def read_no_follow(path: Path) -> bytes:
    """A file's bytes; fails instead of following a link swapped in after the check."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


class FolderSource(AnnotationSource):
    """`ROOT/<wnid>/<name><suffix>`; links are refused, never followed."""

    def __init__(self, root: Path, suffix: str, missing: str | None = None):
        self.root, self.suffix, self.missing = root, suffix, missing

    def _path(self, item: ListedImage) -> Path:
        return self.root / item.wnid / f"{item.name}{self.suffix}"

    def _locate(self, item: ListedImage) -> tuple[int | None, str | None]:
        folder = self.root / item.wnid
        if folder.is_symlink():
            return None, f"symlink member {item.wnid!r}"
        if not folder.is_dir():
            return None, self.missing or f"synset {item.wnid} not in archive"
        size, problem = check_member_file(self._path(item))
        if problem == NOT_IN_ARCHIVE and self.missing:
            problem = self.missing
        return size, problem

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        for item in items:
            _, problem = self._locate(item)
            if problem is not None:
                yield Fetched(item, None, problem)
                continue
            try:
                yield Fetched(item, read_no_follow(self._path(item)), None)
            except OSError as exc:
                yield Fetched(item, None, f"unreadable: {exc.strerror or exc}")

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        found = {item: self._locate(item) for item in items}
        return {item: size for item, (size, problem) in found.items() if problem is None}

    def synsets(self) -> set[str]:
        return {
            p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and WNID_RE.match(p.name)
        }


class NestedTarSource(AnnotationSource):
    """A tar of per-synset archives; `inner_suffix` is the suffix of the wanted members inside them.

    Plain synset tars inside a plain outer tar are indexed by their headers and read with pread
    (the index is cached); compressed ones (annotations, or a gzip outer tar) are read into memory
    one synset at a time, which is small for annotations.
    """

    def __init__(self, archive: ArchiveFile, inner_suffix: str, missing: str | None = None):
        self.archive, self.inner_suffix, self.missing = archive, inner_suffix, missing
        self._scans = ScanCache(INNER_INDEX_ENTRIES)  # wnid -> index of its tar, or why unreadable

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_scans"] = ScanCache(INNER_INDEX_ENTRIES)
        return state

    def synsets(self) -> set[str]:
        return {key for key, entry in self.archive.members.items() if isinstance(entry, list)}

    def _in_memory(self, wnid: str) -> bool:
        return self.archive.gzipped or not self.archive.suffix == ".tar"

    def prepare(self, items: Sequence[ListedImage]) -> None:
        for wnid in sorted({item.wnid for item in items}):
            if isinstance(self.archive.members.get(wnid), list) and not self._in_memory(wnid):
                self._inner_scan(wnid)

    def _inner_scan(self, wnid: str) -> TarScan | str:
        """The index of one synset tar: from memory, the cache, or a scan of its headers."""
        known = self._scans.get(wnid)
        if known is not None:
            return known
        if self._in_memory(wnid):
            result = self._scan_blob(wnid)
        else:
            cache = self.archive.folder / "inner" / f"{wnid}.json" if self.archive.folder else None
            cached = load_json(cache) if cache is not None else None
            if cached is not None:
                result = cached["error"] or TarScan(cached["members"], cached["truncated"])
            else:
                result = self._scan_seekable(wnid)
                if cache is not None:
                    save_json(cache, inner_index_json(result))
        self._scans.put(wnid, result)
        return result

    def _scan_seekable(self, wnid: str) -> TarScan | str:
        offset, size = self.archive.members[wnid]
        label = f"{wnid}{self.archive.suffix}"
        available = max(0, min(size, self.archive.stamp["size"] - offset))
        window = Window(self.archive.fd(), offset, available)
        try:
            scan = scan_tar(window, available, [self.inner_suffix], offset, label)[self.inner_suffix]
        except ARCHIVE_ERRORS as exc:
            return f"synset tar {label} unreadable ({exc})"
        if scan.truncated is None and available < size:
            scan.truncated = f"truncated archive: {label} cut off at byte {offset + available}"
        return scan

    def _scan_blob(self, wnid: str) -> TarScan | str:
        offset, size = self.archive.members[wnid]
        label = f"{wnid}{self.archive.suffix}"
        blob = self.archive.read_member(wnid)
        cut = f"truncated archive: {label} cut off at byte {offset + len(blob)}" if len(blob) < size else None
        try:
            data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
            scan = scan_tar(io.BytesIO(data), len(data), [self.inner_suffix], 0, label)[self.inner_suffix]
        except ARCHIVE_ERRORS as exc:
            return cut or f"synset tar {label} unreadable ({exc})"
        scan.data = data
        scan.truncated = scan.truncated or cut
        return scan

    def _locate(self, item: ListedImage) -> Entry:
        """[offset, size] of an item (in the archive, or in its in-memory synset tar), or why not."""
        entry = self.archive.members.get(item.wnid)
        if entry is None:
            return self.archive.truncated or self.missing or f"synset {item.wnid} not in archive"
        if isinstance(entry, str):
            return entry
        scan = self._inner_scan(item.wnid)
        if isinstance(scan, str):
            return scan
        found = scan.entries.get(item.name)
        if found is None:
            return scan.truncated or self.missing or NOT_IN_ARCHIVE
        return found

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        located = {item: self._locate(item) for item in items}
        return {item: entry[1] for item, entry in located.items() if isinstance(entry, list)}

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        by_synset: dict[str, list[ListedImage]] = defaultdict(list)
        for item in items:
            by_synset[item.wnid].append(item)
        for wnid in sorted(by_synset):
            yield from self._fetch_synset(wnid, by_synset[wnid])

    def _fetch_synset(self, wnid: str, items: list[ListedImage]) -> Iterator[Fetched]:
        ranges = []
        scan = self._inner_scan(wnid) if isinstance(self.archive.members.get(wnid), list) else None
        in_memory = scan.data if isinstance(scan, TarScan) else None
        for item in items:
            entry = self._locate(item)
            if isinstance(entry, str):
                yield Fetched(item, None, entry)
            elif in_memory is not None:
                data = in_memory[entry[0] : entry[0] + entry[1]]
                if len(data) == entry[1]:
                    yield Fetched(item, data, None)
                else:
                    yield Fetched(
                        item, None, f"truncated archive: {item.name} cut off in {wnid}{self.archive.suffix}"
                    )
            else:
                ranges.append((item, entry[0], entry[1]))
        yield from fetch_ranges(self.archive, ranges)


class ScanCache:
    """Recently used synset-tar indexes, bounded by their total entries (and by count when they hold
    the tar's bytes), so that callers visiting synsets in shuffled order (build's shards) load each
    index from disk about once, while memory stays bounded on a 14-million-image archive."""

    def __init__(self, max_entries: int, max_in_memory_tars: int = 2):
        self.max_entries, self.max_tars = max_entries, max_in_memory_tars
        self.scans: dict[str, TarScan | str] = {}
        self.entries = self.tars = 0

    def get(self, wnid: str) -> TarScan | str | None:
        scan = self.scans.pop(wnid, None)
        if scan is not None:
            self.scans[wnid] = scan  # most recently used last
        return scan

    def put(self, wnid: str, scan: TarScan | str) -> None:
        self._drop(wnid)
        self.scans[wnid] = scan
        self._count(scan, +1)
        while len(self.scans) > 1 and (self.entries > self.max_entries or self.tars > self.max_tars):
            self._drop(next(iter(self.scans)))

    def _drop(self, wnid: str) -> None:
        scan = self.scans.pop(wnid, None)
        if scan is not None:
            self._count(scan, -1)

    def _count(self, scan: TarScan | str, sign: int) -> None:
        held = isinstance(scan, TarScan)
        self.entries += sign * (len(scan.entries) + 1 if held else 1)
        self.tars += sign * int(held and scan.data is not None)


def fetch_ranges(archive: ArchiveFile, ranges: list[tuple[ListedImage, int, int]]) -> Iterator[Fetched]:
    """Read members by offset; one that comes back short lies past where the archive is cut off."""
    expected = {item: size for item, _, size in ranges}
    for item, data in archive.read_ranges(ranges):
        if len(data) != expected[item]:
            yield Fetched(item, None, f"truncated archive: {item.name} cut off in {archive.path.name}")
        else:
            yield Fetched(item, data, None)


def inner_index_json(result: TarScan | str) -> dict:
    """The cache form of one synset tar's index."""
    if isinstance(result, str):
        return {"version": INDEX_VERSION, "error": result}
    return {"version": INDEX_VERSION, "error": None, "members": result.entries, "truncated": result.truncated}


class FlatTarSource(ImageSource):
    """A flat tar of `<name>.JPEG` (ILSVRC-2012 validation) with each image's wnid from a labels file."""

    def __init__(self, archive: ArchiveFile, labels: dict[str, str], labels_path: Path):
        self.archive, self.labels, self.labels_path = archive, labels, labels_path

    def synsets(self) -> set[str]:
        return set(self.labels.values())

    def _locate(self, item: ListedImage) -> Entry:
        label = self.labels.get(item.name)
        if label is None:
            return f"no label in {self.labels_path.name}"
        if label != item.wnid:
            return f"labelled {label} in {self.labels_path.name}, listed as {item.wnid}"
        entry = self.archive.members.get(item.name)
        if entry is None:
            return self.archive.truncated or NOT_IN_ARCHIVE
        return entry

    def sizes(self, items: Sequence[ListedImage]) -> dict[ListedImage, int]:
        located = {item: self._locate(item) for item in items}
        return {item: entry[1] for item, entry in located.items() if isinstance(entry, list)}

    def fetch(self, items: Sequence[ListedImage]) -> Iterator[Fetched]:
        ranges = []
        for item in items:
            entry = self._locate(item)
            if isinstance(entry, str):
                yield Fetched(item, None, entry)
            else:
                ranges.append((item, entry[0], entry[1]))
        yield from fetch_ranges(self.archive, ranges)


# ---------------------------------------------------------------------------------------------------
# Opening


def read_val_labels(path: str | Path) -> dict[str, str]:
    """Validation labels: `<filename> <wnid>` lines, or one wnid a line for val_00000001, 2, ... in order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read validation labels: {exc}") from None
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
        if not WNID_RE.match(wnid):
            raise UserError(f"{path}:{number}: bad synset id {wnid!r}")
        labels[name] = wnid
    if not labels:
        raise UserError(f"{path}: no validation labels")
    return labels


def open_images(
    path: str | Path, *, val_labels: str | Path | None = None, index_dir: str | Path | None = None
) -> ImageSource:
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


def open_annotations(path: str | Path, *, index_dir: str | Path | None = None) -> AnnotationSource:
    """A folder `DIR/<wnid>/<name>.xml` or a tar(.gz) of `<wnid>.tar.gz` holding `.../<name>.xml`."""
    path = Path(path)
    if path.is_dir():
        return FolderSource(path, XML_SUFFIX, missing=NO_ANNOTATION)
    if not path.exists():
        raise UserError(f"{path}: annotation archive not found")
    archive = ArchiveFile(path, (".tar.gz",), Path(index_dir) if index_dir else None, spill=True)
    if not archive.members and not archive.truncated:
        raise UserError(f"{path}: holds no <wnid>.tar.gz annotation archives")
    return NestedTarSource(archive, XML_SUFFIX, missing=NO_ANNOTATION)
