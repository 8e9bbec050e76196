"""Scanning a tar's member headers: which members are usable (`Found`), which are not and why (`Missing`).

A scan never extracts by member name: names only give the lookup key. Members with `..`, absolute
paths, links or devices are refused with a reason, so a hostile archive cannot smuggle data under a
listed name. `Window` lets a scan read one inner tar of a huge outer tar in place, by `os.pread`.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Errors that mean "the bytes of this archive end early or are garbage".
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)

KeepMember = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class Found:
    """A usable member: where its data starts (in the archive, or in an in-memory tar) and its size."""

    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Missing:
    """Why a member cannot be used (refused, absent, cut off); the reason is what reports show."""

    reason: str


Entry = Found | Missing


def path_problem(name: str) -> str | None:
    """Why a member's path must not be used (absolute, or climbing out with `..`), or None."""
    if name.startswith("/") or posixpath.isabs(name) or ".." in name.split("/"):
        return f"unsafe member path {name!r}"
    return None


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a tar member must not be used (unsafe path, link, device, sparse), or None if it is fine."""
    name = info.name
    if problem := path_problem(name):
        return problem
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
    if isinstance(entry, Missing) and isinstance(entries.get(key), Found):
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
    """Index a tar's members by suffix: {suffix: key -> Found(base + data offset, size) or Missing}.

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
        put_entry(entries[suffix], key, Missing(problem) if problem else Found(base + info.offset_data, info.size))
        if keep is not None and problem is None:
            try:
                keep(f"{key}{suffix}", tar.extractfile(info).read())
            except ARCHIVE_ERRORS as exc:
                truncated = f"truncated archive: {label} unreadable inside {info.name!r} ({exc})"
                break
    return {suffix: TarScan(found, truncated) for suffix, found in entries.items()}


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_USTAR_MAGICS = (b"ustar\x0000", b"ustar  \x00")  # POSIX and GNU


def scan_tar_bytes(data: bytes, suffixes: Sequence[str], label: str) -> dict[str, TarScan]:
    """`scan_tar` of a tar held in memory (a synset's annotation archive, decompressed).

    Reads the headers itself when every member is a plain regular file under a short name that ends
    cleanly (every ImageNet synset tar): about 10x faster than `tarfile`, which dominated reading
    ImageNet's annotations. Anything else, and any doubt, goes to `scan_tar`, so results are the same.
    """
    found = _plain_members(data, suffixes)
    if found is None:
        return scan_tar(io.BytesIO(data), len(data), suffixes, 0, label)
    return {suffix: TarScan(entries, None) for suffix, entries in found.items()}


def header_sum(header: bytes) -> int:
    """The sum of a 512-byte header's bytes, as its checksum counts them, at C speed (5x `sum`): adler32's
    low half is 1 + the bytes' sum mod 65521, exact for 256 bytes (at most 65,280)."""
    return (zlib.adler32(header[:256]) & 0xFFFF) + (zlib.adler32(header[256:]) & 0xFFFF) - 2


def _plain_members(data: bytes, suffixes: Sequence[str]) -> dict[str, dict[str, Entry]] | None:
    """{suffix: key -> entry} of a tar of plain regular files ending cleanly, else None (not that simple)."""
    entries: dict[str, dict[str, Entry]] = {suffix: {} for suffix in suffixes}
    offset, end = 0, len(data)
    if not end:
        return None  # tarfile: "empty file"
    while offset < end:
        header = data[offset : offset + tarfile.BLOCKSIZE]
        if header == _ZERO_BLOCK and offset > 0:
            return entries  # the end-of-archive block
        if len(header) < tarfile.BLOCKSIZE or header[156:157] != b"0" or header[257:265] not in _USTAR_MAGICS:
            return None  # links, directories, long names (pax, GNU), old formats, a cut-off header
        if header[345:346] != b"\x00":  # a ustar name prefix
            return None
        try:  # octal digits, else (base-256 sizes, garbage) tarfile decides
            checksum = int(header[148:156].split(b"\x00", 1)[0].strip() or b"0", 8)
            size = int(header[124:136].split(b"\x00", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
        if checksum != header_sum(header) - sum(header[148:156]) + 8 * 32:  # the checksum field counts as spaces
            return None
        start = offset + tarfile.BLOCKSIZE
        name = header[:100].split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
        if not name.isascii():  # a name tarfile may decode otherwise
            return None
        for suffix in suffixes:
            key = member_key(name, suffix)
            if key is not None:
                problem = path_problem(name)
                put_entry(entries[suffix], key, Missing(problem) if problem else Found(start, size))
                break
        offset = start + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return entries if offset == end else None  # else cut off inside a member: tarfile says where


def merged_scan(scans: dict[str, TarScan], suffixes: Sequence[str]) -> TarScan:
    """One index of the members of several suffixes (`.jpeg`, `.jpg`, `.png`): a usable member wins
    over a refused one, and between two usable ones of the same name the earlier suffix wins."""
    entries: dict[str, Entry] = {}
    for suffix in reversed(suffixes):  # put_entry lets a later usable entry win
        for key, entry in scans[suffix].entries.items():
            put_entry(entries, key, entry)
    return TarScan(entries, scans[suffixes[0]].truncated)


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


class ScanCache:
    """Recently used synset-tar indexes, bounded by their total entries (and by count when they hold
    the tar's bytes), so that callers visiting synsets in shuffled order (build's shards) load each
    index from disk about once, while memory stays bounded on a 14-million-image archive."""

    def __init__(self, max_entries: int, max_in_memory_tars: int = 2):
        self.max_entries, self.max_tars = max_entries, max_in_memory_tars
        self.scans: dict[str, TarScan | Missing] = {}
        self.entries = self.tars = 0

    def get(self, wnid: str) -> TarScan | Missing | None:
        """The scan of `wnid`'s tar (or why it is unreadable), None when not held; marks it recently used."""
        scan = self.scans.pop(wnid, None)
        if scan is not None:
            self.scans[wnid] = scan  # most recently used last
        return scan

    def put(self, wnid: str, scan: TarScan | Missing) -> None:
        """Hold `scan`, dropping the least recently used ones beyond the budget (never the newest)."""
        self._drop(wnid)
        self.scans[wnid] = scan
        self._count(scan, +1)
        while len(self.scans) > 1 and (self.entries > self.max_entries or self.tars > self.max_tars):
            self._drop(next(iter(self.scans)))

    def _drop(self, wnid: str) -> None:
        scan = self.scans.pop(wnid, None)
        if scan is not None:
            self._count(scan, -1)

    def _count(self, scan: TarScan | Missing, sign: int) -> None:
        held = isinstance(scan, TarScan)
        self.entries += sign * (len(scan.entries) + 1 if held else 1)
        self.tars += sign * int(held and scan.data is not None)
