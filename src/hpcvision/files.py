"""Atomic file writes: one temporary-name convention and one cleanup for every stage.

A reader (another rank, a resumed run, `verify`) never sees a partial file: everything is written
under a hidden sibling name `.<name>.tmp-<host>-<pid>-<random>` and renamed into place. Host and pid
say who writes it, so a cleanup removes only leftovers whose writer is dead and never the live
temporary of a concurrent process (a second identical build, a rank on another node); the random
part keeps two writers with the same host and pid (containers) apart.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".tmp-"
# A writer on another host cannot be asked whether it lives. A live one keeps its temporary's mtime
# moving (records and images are written as they come), so one untouched for this long is a leftover.
STALE_S = 3600.0


def _host() -> str:
    return socket.gethostname().replace("/", "_")[:64] or "localhost"


def temporary_path(path: str | Path, *, pid: int | None = None) -> Path:
    """A hidden sibling of `path` that no other process uses (`pid`: the writer's, default this process)."""
    path = Path(path)
    pid = os.getpid() if pid is None else pid
    return path.with_name(f".{path.name}{TEMP_MARK}{_host()}-{pid}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` (chmod `mode` first), else it is removed.

    An OSError about the temporary (disk full, read-only) is raised naming `path`, the file the user knows.
    """
    tmp = temporary_path(path)
    try:
        yield tmp
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # a read-only disk refuses this too; the first error matters
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and (exc.filename is None or str(exc.filename) == str(tmp)):
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise


def write_atomic(path: str | Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Write `data` (str as UTF-8) to `path` atomically."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def is_temporary(name: str) -> bool:
    """True for a file name `temporary_path` makes."""
    return name.startswith(".") and TEMP_MARK in name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def writer_may_live(name: str, mtime: float, now: float) -> bool:
    """Whether the process that made temporary `name` may still be writing it.

    On this host its pid says; a writer elsewhere (or a name without host) counts as dead only once
    the file has not changed for STALE_S.
    """
    parts = name.rsplit(TEMP_MARK, 1)[-1].rsplit("-", 2)
    if len(parts) == 3 and parts[0] == _host() and parts[1].isdigit() and int(parts[1]) > 0:
        return _pid_alive(int(parts[1]))
    return now - mtime < STALE_S


def remove_temporaries(folder: str | Path, name: str | None = None) -> int:
    """Delete leftovers of interrupted writes in `folder` (only those of `name` when given); how many.

    Only temporaries whose writer is dead go (`writer_may_live`), so a concurrent writer of the same
    file keeps its own. Call it where this process owns the files (its shard, its synset folder).
    """
    prefix = f".{name}{TEMP_MARK}" if name is not None else None
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    now = time.time()
    for entry in entries:
        wanted = entry.name.startswith(prefix) if prefix else is_temporary(entry.name)
        if not wanted or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            if not writer_may_live(entry.name, entry.stat(follow_symlinks=False).st_mtime, now):
                os.unlink(entry.path)
                removed += 1
    return removed
