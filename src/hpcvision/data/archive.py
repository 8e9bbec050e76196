"""`ArchiveFile`: one outer tar (plain or gzip), its cached member index, and reading members by offset.

The real `Images.tar` is over 1 TB, so the outer tar's member headers are scanned once and the result
(key -> offset, size of each member) is cached as JSON under `index_dir` (see `archive_index`); after
that a member is one `os.pread` (a gzip archive is read forward, decompressing over the gaps).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from hpcvision.data.archive_index import (
    INDEX_VERSION,
    archive_stamp,
    index_folder,
    load_json,
    save_json,
    scan_from_json,
    scan_json,
)
from hpcvision.data.tarscan import ARCHIVE_ERRORS, Entry, TarScan, merged_scan, scan_tar
from hpcvision.errors import UserError
from hpcvision.files import write_atomic

log = logging.getLogger(__name__)


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


class ArchiveFile:
    """An outer tar (plain or gzip) with its cached member index; reads member bytes by offset.

    gzip has no random access, so with `spill` the members of a gzipped outer tar (small per-synset
    annotation archives) are kept while it is indexed: as files in the index folder, else in memory.
    """

    members: dict[str, Entry]  # key (a wnid, or an image name in a flat tar) -> Found or Missing
    suffix: str  # the suffix of the members indexed (".tar", ".JPEG", ".tar.gz")
    truncated: str | None  # how the archive ends early, None when it ends cleanly

    def __init__(self, path: Path, suffixes: Sequence[str], index_dir: Path | None, spill: bool = False,
                 one_layout: Sequence[str] = ()):
        """`suffixes`: the member suffixes that make a layout, the first found wins; those in `one_layout`
        (`.JPEG .jpg .png`) are one layout, indexed together under the first of them."""
        self.path = path
        self.spilled: dict[str, bytes] = {}
        try:
            self.stamp = archive_stamp(path)
            self.gzipped = is_gzip(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot read archive: {exc.strerror or exc}") from None
        self.folder = index_folder(index_dir, self.stamp) if index_dir is not None else None
        self.spill = spill and self.gzipped
        self.suffix, self.gzipped, scan = self._load_or_scan(suffixes, tuple(one_layout))
        self.spill = spill and self.gzipped
        self.members, self.truncated = scan.entries, scan.truncated
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None  # descriptors do not cross process boundaries
        return state

    def _load_or_scan(self, suffixes: Sequence[str], one_layout: tuple[str, ...]) -> tuple[str, bool, TarScan]:
        """(suffix of the layout, gzipped, scan): from the cache when it matches this archive, else scanned."""
        cache = self.folder / "outer.json" if self.folder is not None else None
        if cache is not None:
            cached = load_json(cache)
            if cached is not None and cached.get("stamp") == self.stamp:
                log.debug("archive index of %s read from %s", self.path, cache)
                return cached["suffix"], cached["gzipped"], scan_from_json(cached)
        suffix, scan = self._scan(suffixes, one_layout)
        if cache is not None:
            index = {"version": INDEX_VERSION, "stamp": self.stamp, "suffix": suffix, "gzipped": self.gzipped}
            save_json(cache, {**index, **scan_json(scan)})
            log.info("indexed %s (%d members) -> %s", self.path, len(scan.entries), cache)
        return suffix, self.gzipped, scan

    def _scan(self, suffixes: Sequence[str], one_layout: tuple[str, ...]) -> tuple[str, TarScan]:
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
        if suffix in one_layout:  # e.g. a flat tar of .jpg images, or of .JPEG and .png
            return one_layout[0], merged_scan(scans, one_layout)
        return suffix, scans[suffix]

    def _keep_member(self, name: str, data: bytes) -> None:
        """Keep a member read in passing: under the index folder, else (none, or unwritable) in memory.
        Only nested archives are kept (read whole later); loose XML members are read by offset."""
        if not name.endswith(".tar.gz"):
            return
        if self.folder is not None:
            target = self.folder / "members" / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, data)
                return
            except OSError as exc:  # a read-only cache location only costs memory
                if not self.spilled:
                    log.warning("cannot keep archive members under %s (%s): keeping them in memory",
                                target.parent, exc)
        self.spilled[name] = data

    def read_member(self, key: str) -> bytes:
        """The bytes of member `key` (e.g. a wnid): kept while indexing, else read at its offset."""
        name = f"{key}{self.suffix}"
        if name in self.spilled:
            return self.spilled[name]
        if self.spill and self.folder is not None:
            with contextlib.suppress(OSError):
                return (self.folder / "members" / name).read_bytes()
        entry = self.members[key]
        return self.read(entry.offset, entry.size)

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
