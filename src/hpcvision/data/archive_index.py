"""The on-disk cache of archive indexes: where it lives, what identifies an archive, its JSON form.

An archive's indexes live in `<index_dir>/<name>-<hash of path, size, mtime>/`: `outer.json` for the
outer tar, `inner/<wnid>.json` for each synset tar. A member is `[offset, size]` when usable, else the
reason as a string. The cache only saves time: an unreadable one is rebuilt, an unwritable one is
skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from hpcvision.data.tarscan import Entry, Found, Missing, TarScan
from hpcvision.files import write_atomic

log = logging.getLogger(__name__)

# 3: synset tars index every image suffix (.jpeg, .jpg, .png), not .JPEG alone
# 4: so do flat tars of images (ILSVRC-2012 validation's layout, with .jpg or .png members)
INDEX_VERSION = 4


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


def save_json(path: Path, data: dict) -> None:
    """Write atomically: ranks sharing a file system may write the same index at the same time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data, separators=(",", ":")))
    except OSError as exc:  # a read-only cache location only costs speed
        log.warning("cannot cache archive index at %s: %s", path, exc)


def scan_json(scan: TarScan) -> dict:
    """The cache form of a scan: `members` (key -> [offset, size] or reason) and `truncated`."""
    members = {
        key: [entry.offset, entry.size] if isinstance(entry, Found) else entry.reason
        for key, entry in scan.entries.items()
    }
    return {"members": members, "truncated": scan.truncated}


def scan_from_json(data: dict) -> TarScan:
    """The scan `scan_json` wrote."""
    entries: dict[str, Entry] = {
        key: Missing(value) if isinstance(value, str) else Found(*value) for key, value in data["members"].items()
    }
    return TarScan(entries, data["truncated"])


def inner_json(result: TarScan | Missing) -> dict:
    """The cache form of one synset tar's index, or of why it is unreadable."""
    if isinstance(result, Missing):
        return {"version": INDEX_VERSION, "error": result.reason}
    return {"version": INDEX_VERSION, "error": None, **scan_json(result)}


def inner_from_json(data: dict) -> TarScan | Missing:
    """The synset tar index (or reason) `inner_json` wrote."""
    return Missing(data["error"]) if data["error"] else scan_from_json(data)
