"""`hpcvision data index`: a manifest for TFRecords another tool wrote, so train, evaluate and verify read them.

Inception's `build_imagenet_data.py` writes `train-00000-of-01024` ... with labels 1..1000 (0 is
background) and the synset and words in each record; tf-models' converters often write only
`image/encoded` and a 0-based `image/class/label`. Neither writes a manifest. Indexing reads every
record once (framing and CRCs checked, as verify does), counts each shard and collects the label map.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpcvision.data import records
from hpcvision.data.config import IndexConfig
from hpcvision.data.shards import FORMAT_VERSION, manifest_path, write_json
from hpcvision.errors import UserError
from hpcvision.progress import progress

log = logging.getLogger(__name__)

def default_pattern(name: str) -> str:
    """The shard files of split `name` in the inception naming: `<name>-*-of-*`."""
    return f"{name}-*-of-*"


def no_manifest_error(folder: str | Path, name: str) -> UserError:
    """The one line for a split without a manifest: `data index` when its shards are there, else `data build`."""
    path = manifest_path(folder, name)
    if _shard_files(Path(folder), default_pattern(name)):
        return UserError(f"{path}: no manifest, but {default_pattern(name)} shards are there (written by another "
                         f"tool?); make one with: hpcvision data index {folder} --name {name}")
    return UserError(f"{path}: no manifest (build the '{name}' shards with `hpcvision data build`, or index "
                     f"existing ones with `hpcvision data index {folder} --name {name}`)")


def _shard_files(folder: Path, pattern: str) -> list[Path]:
    """Files matching `pattern`, without our sidecars (`.json`) and hidden temporaries."""
    try:
        return sorted(p for p in folder.glob(pattern)
                      if p.is_file() and not p.name.startswith(".") and p.suffix != ".json")
    except OSError:
        return []


@dataclass
class _Split:
    """What the records of a split say: counts per shard, each label's synset and words, keys in every record."""

    shards: list[dict] = field(default_factory=list)
    labels: dict[int, tuple[str, str]] = field(default_factory=dict)
    where: dict[int, str] = field(default_factory=dict)  # label -> "shard: record i" that first named it
    keys: set[str] | None = None


def _add_record(split: _Split, data: bytes, where: str) -> None:
    """Fold one record into `split`; UserError naming it when it lacks what training reads."""
    try:
        features = records.decode_example(data)
    except records.RecordFormatError as exc:
        raise UserError(f"{where}: not a tf.train.Example ({exc})") from None
    problem = records.check_required(features)
    if problem:
        raise UserError(f"{where}: {problem}")
    label = features["image/class/label"][0]
    synset, text = (_text(features, key) for key in ("image/class/synset", "image/class/text"))
    known = split.labels.get(label)
    if known is None:
        split.labels[label], split.where[label] = (synset, text), where
    elif synset and known[0] and synset != known[0]:
        raise UserError(f"{where}: label {label} is {synset}, but {known[0]} in {split.where[label]}")
    split.keys = set(features) if split.keys is None else split.keys & set(features)


def _text(features: dict, key: str) -> str:
    values = features.get(key, [])
    return values[0].decode("utf-8", "replace") if values and isinstance(values[0], bytes) else ""


def _read_split(files: list[Path], name: str) -> _Split:
    """Every record of `files`, CRC-checked, folded into a _Split."""
    split = _Split()
    with progress(len(files), f"index {name}", unit="shard") as bar:
        for path in files:
            count = 0
            try:
                for count, data in enumerate(records.read_records(path), start=1):
                    _add_record(split, data, f"{path}: record {count - 1}")
            except records.CorruptRecord as exc:
                raise UserError(f"{path}: record {exc.index}: {exc.reason}") from None
            split.shards.append({"file": path.name, "count": count, "bytes": path.stat().st_size})
            bar.update(1)
    return split


def infer_label_offset(labels: set[int], has_synsets: bool, given: int | None, source: str) -> int:
    """Stored label - offset = class: `given`, else 0 when some label is 0, else 1 (0 kept for background)."""
    lowest = min(labels)
    if given is not None:
        if lowest < given:
            raise UserError(f"{source}: label {lowest} is below --label-offset {given}")
        return given
    if lowest == 0:
        return 0
    if not has_synsets:
        log.info("%s: no label 0 and no synsets in the records: taking labels as 1-based (0 = background, as "
                 "inception); pass --label-offset 0 if they are 0-based", source)
    return 1


def _manifest(config: IndexConfig, pattern: str, split: _Split) -> dict:
    has_synsets = any(wnid for wnid, _ in split.labels.values())
    offset = infer_label_offset(set(split.labels), has_synsets, config.label_offset, str(config.folder))
    highest = max(split.labels)
    empty = ("", "")
    return {
        "name": config.name,
        "format_version": FORMAT_VERSION,
        "indexed": True,
        "pattern": pattern,
        "schema": {"record": "tf.train.Example", "keys": sorted(split.keys or ()), "origin": "indexed"},
        "num_examples": sum(s["count"] for s in split.shards),
        "num_classes": highest - offset + 1,
        "label_offset": offset,
        "labels": [{"label": label, "wnid": split.labels.get(label, empty)[0], "text": split.labels.get(label, empty)[1]}
                   for label in range(offset, highest + 1)],
        "shards": split.shards,
    }


def index(config: IndexConfig) -> int:
    """Count and label every shard of `config.pattern` in `config.folder`; write `<name>-manifest.json`."""
    start = time.monotonic()
    pattern = config.pattern or default_pattern(config.name)
    files = _shard_files(config.folder, pattern)
    if not files:
        raise UserError(f"{config.folder}: no files match {pattern!r}")
    split = _read_split(files, config.name)
    if not split.labels:
        raise UserError(f"{config.folder}: the {len(files)} files matching {pattern!r} hold no records")
    manifest = _manifest(config, pattern, split)
    write_json(manifest_path(config.folder, config.name), manifest)
    missing = sorted(set(records.SCHEMA_KEYS) - (split.keys or set()))
    print(f"indexed {manifest['num_examples']} records in {len(files)} shards of {config.folder}/{pattern}: "
          f"{manifest['num_classes']} classes, label offset {manifest['label_offset']}, in "
          f"{time.monotonic() - start:.1f} s")
    if missing:
        print(f"  not in every record (optional): {', '.join(missing)}")
    print(f"  manifest {manifest_path(config.folder, config.name)}")
    return 0
