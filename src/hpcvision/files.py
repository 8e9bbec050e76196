"""Atomic file writes: one temporary-name convention and one cleanup for every stage.

A reader (another rank, a resumed run, `verify`) never sees a partial file: everything is written
under a hidden sibling name `.<name>.tmp-<pid>-<random>` and renamed into place. The random part keeps
ranks with the same pid on different nodes of a shared file system apart.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".tmp-"


def temporary_path(path: str | Path) -> Path:
    """A hidden sibling of `path` that no other process uses."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` (chmod `mode` first), else it is removed."""
    tmp = temporary_path(path)
    try:
        yield tmp
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Write `data` (str as UTF-8) to `path` atomically."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def is_temporary(name: str) -> bool:
    """True for a file name `temporary_path` makes."""
    return name.startswith(".") and TEMP_MARK in name


def remove_temporaries(folder: str | Path, name: str | None = None) -> int:
    """Delete leftovers of interrupted writes in `folder` (only those of `name` when given); how many.

    Call it only where this process owns the files (its shard, its synset folder).
    """
    prefix = f".{name}{TEMP_MARK}" if name is not None else None
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        wanted = entry.name.startswith(prefix) if prefix else is_temporary(entry.name)
        if wanted and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed
