"""`hpcvision data verify`: read every shard back and reconcile it with the manifest.

Checks, per record: the TFRecord framing and both masked CRC-32Cs, that the payload is an Example of
the inception schema, that its label/synset/text agree with the manifest's label map, and (with
`decode`) that the JPEG decodes, with the decoder training uses, to the stored size. Then per-shard
and total counts. The first problem ends the command with a one-line error naming the shard and the
record index (exit code 2).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hpcvision.data import records
from hpcvision.data.images import ImageProblem, check_header_pixels, check_pixels
from hpcvision.data.shards import manifest_path, read_manifest
from hpcvision.errors import UserError, op_error_line
from hpcvision.progress import progress

log = logging.getLogger(__name__)


def _check_record(data: bytes, labels: dict[int, tuple[str, str]], decode: bool,
                  absent: set[str] | None = None) -> str | None:
    """What is wrong with one record; `absent` (indexed splits, made by another tool): only the
    REQUIRED_KEYS must be there, the inception keys missing are added to it, not refused."""
    try:
        features = records.decode_example(data)
    except records.RecordFormatError as exc:
        return f"not a tf.train.Example ({exc})"
    if absent is not None:
        return _check_indexed(features, labels, decode, absent)
    problem = records.check_example(features)
    if problem:
        return problem
    label = features["image/class/label"][0]
    if label not in labels:
        return f"label {label} not in the manifest's label map"
    wnid, text = labels[label]
    synset = features["image/class/synset"][0].decode("utf-8", "replace")
    if synset != wnid:
        return f"label {label} is {wnid} in the manifest, record says {synset}"
    if features["image/class/text"][0].decode("utf-8", "replace") != text:
        return f"image/class/text differs from the manifest's words for {wnid}"
    if any(v != label for v in features["image/object/bbox/label"]):
        return "bbox label differs from the class label"
    if decode:
        return _check_pixels(features)
    return None


def _check_indexed(features: dict, labels: dict[int, tuple[str, str]], decode: bool, absent: set[str]) -> str | None:
    """A record of another tool's split: the keys training reads, its label (and synset, if it has one)."""
    problem = records.check_required(features)
    if problem:
        return problem
    absent.update(key for key in records.SCHEMA_KEYS if key not in features)
    label = features["image/class/label"][0]
    if label not in labels:
        return f"label {label} not in the manifest's label map"
    wnid = labels[label][0]
    synset = features.get("image/class/synset", [b""])[0]
    if wnid and isinstance(synset, bytes) and synset and synset.decode("utf-8", "replace") != wnid:
        return f"label {label} is {wnid} in the manifest, record says {synset.decode('utf-8', 'replace')}"
    return _check_pixels(features) if decode else None


def _check_pixels(features: dict) -> str | None:
    """Decode the JPEG as training does (TensorFlow's decode_jpeg, stricter than Pillow about a
    damaged scan) and compare its size; a size above MAX_PIXELS is refused before decoding."""
    import tensorflow as tf

    sized = "image/width" in features and "image/height" in features  # other tools' records may lack them
    width, height = (features["image/width"][0], features["image/height"][0]) if sized else (0, 0)
    try:
        if sized:
            check_pixels(width, height)
        else:
            check_header_pixels(features["image/encoded"][0])
    except ImageProblem as exc:
        return str(exc)
    try:
        shape = tf.io.decode_jpeg(features["image/encoded"][0], channels=3).shape
    except tf.errors.OpError as exc:
        return f"JPEG does not decode ({op_error_line(exc)})"
    if sized and (shape[1], shape[0]) != (width, height):
        return f"decoded {shape[1]}x{shape[0]} differs from the stored {width}x{height}"
    return None


def verify(folder: Path, name: str = "train", decode: bool = False) -> int:
    """Check every shard named in the manifest; 0 if all is well, UserError on the first problem."""
    manifest = read_manifest(folder, name, required=("shards", "labels", "num_examples"))
    try:
        labels = {entry["label"]: (entry["wnid"], entry["text"]) for entry in manifest["labels"]}
    except (KeyError, TypeError):
        raise UserError(f"{manifest_path(folder, name)}: manifest 'labels' is not a list of "
                        "{label, wnid, text} entries") from None
    absent: set[str] | None = set() if manifest.get("indexed") else None
    total = 0
    start = time.monotonic()
    with progress(manifest["num_examples"], f"verify {name}", unit="rec") as bar:
        for shard in manifest["shards"]:
            path = folder / shard["file"]
            if not path.is_file():
                raise UserError(f"{path}: shard listed in the manifest is missing")
            count = 0
            try:
                for index, data in enumerate(records.read_records(path)):
                    problem = _check_record(data, labels, decode, absent)
                    if problem:
                        raise UserError(f"{path}: record {index}: {problem}")
                    count += 1
                    bar.update(1)
            except records.CorruptRecord as exc:
                raise UserError(f"{path}: record {exc.index}: {exc.reason}") from None
            if count != shard["count"]:
                raise UserError(f"{path}: {count} records, manifest says {shard['count']}")
            total += count
    if total != manifest["num_examples"]:
        raise UserError(f"{folder}: {total} records in all shards, manifest says {manifest['num_examples']}")
    listed, skipped = manifest.get("listed"), manifest.get("skipped")
    if listed is not None and skipped is not None and listed != total + skipped:
        raise UserError(f"{manifest_path(folder, name)}: listed {listed} != written {total} + skipped {skipped}")
    if absent:
        log.info("%s: indexed split (written by another tool); inception keys absent from some records, not "
                 "needed to train: %s", manifest_path(folder, name), ", ".join(sorted(absent)))
    print(f"verified {total} records in {len(manifest['shards'])} shards of {folder}/{name} "
          f"({'CRCs, schema, labels, JPEG decode' if decode else 'CRCs, schema, labels'}) "
          f"in {time.monotonic() - start:.1f} s")
    return 0
