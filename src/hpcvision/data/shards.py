"""The on-disk layout of a built split: shard names, per-shard sidecars and the manifest.

`hpcvision data build` writes, in OUT:
  <name>-00000-of-00008 ...   TFRecord shards (inception naming)
  <name>-00000-of-00008.json  the sidecar of each shard: count, bytes, fingerprint of what went in
  <name>-manifest.json        the merged sidecars, the label map and the counts (FORMAT_VERSION)
  <name>-skipped.tsv, <name>-warnings.tsv   what was left out or changed, one row per image
Everything that reads or writes these names goes through this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpcvision.errors import UserError
from hpcvision.files import write_atomic

FORMAT_VERSION = 1


def shard_path(out: Path, name: str, index: int, total: int) -> Path:
    """`OUT/<name>-00003-of-00008`, the inception naming."""
    return out / f"{name}-{index:05d}-of-{total:05d}"


def sidecar_path(path: str | Path) -> Path:
    """The sidecar `<shard>.json` that marks a shard complete."""
    return Path(f"{path}.json")


def manifest_path(out: str | Path, name: str) -> Path:
    """`OUT/<name>-manifest.json`."""
    return Path(out) / f"{name}-manifest.json"


def report_paths(name: str) -> tuple[str, str]:
    """File names of the split's skipped and warnings reports (relative to OUT)."""
    return f"{name}-skipped.tsv", f"{name}-warnings.tsv"


def has_manifest(out: str | Path, name: str) -> bool:
    """True when the split `name` has been built in `out`."""
    return manifest_path(out, name).is_file()


def write_json(path: Path, data: object) -> None:
    """A sidecar or manifest, written atomically."""
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def write_tsv(path: Path, header: str, rows: list[list[str]]) -> None:
    """A report table, written atomically; tabs and newlines inside cells become spaces."""
    clean = ("\t".join(c.replace("\t", " ").replace("\n", " ") for c in row) for row in rows)
    write_atomic(path, header + "\n" + "".join(f"{line}\n" for line in clean))


def read_json(path: str | Path) -> dict | None:
    """A sidecar or manifest as a dict, or None if missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_manifest(out: str | Path, name: str, required: tuple[str, ...] = ("shards", "num_examples")) -> dict:
    """The manifest `build` wrote, shard paths made absolute; UserError naming the file if unusable."""
    path = manifest_path(out, name)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        from hpcvision.data.index import no_manifest_error  # names `data index` when shards are already there

        raise no_manifest_error(out, name) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: manifest is not a JSON object")
    for key in required:
        if key not in manifest:
            raise UserError(f"{path}: manifest has no '{key}'")
    shards = manifest.get("shards", [])
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("file"), str)
                                               and isinstance(s.get("count"), int) for s in shards):
        raise UserError(f"{path}: manifest 'shards' is not a list of {{\"file\", \"count\"}} entries")
    for shard in shards:
        shard["path"] = str(Path(out) / shard["file"])
    manifest.setdefault("label_offset", 1)
    if "num_classes" not in manifest and "labels" in manifest:
        manifest["num_classes"] = len(manifest["labels"])
    return manifest
