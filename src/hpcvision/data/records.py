"""The record format: `tf.train.Example` with the keys of inception's `build_imagenet_data.py`.

Writers (`encode_example`, `RecordWriter`) need no TensorFlow: the Example protobuf and the TFRecord
framing are encoded here, so `data build` workers start in milliseconds instead of seconds. The
training pipeline parses records with `feature_spec()` (TensorFlow, imported on first use);
`decode_example` reads a record back without TensorFlow (for `data verify`).

Keys, in the inception schema (bbox lists have one entry per box, relative [0, 1]):
image/height, image/width, image/colorspace (b"RGB"), image/channels (3), image/class/label,
image/class/synset, image/class/text, image/object/bbox/{xmin,xmax,ymin,ymax}, image/object/bbox/label,
image/format (b"JPEG"), image/filename, image/encoded.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

BBOX_KEYS = ("image/object/bbox/xmin", "image/object/bbox/xmax", "image/object/bbox/ymin", "image/object/bbox/ymax")
INT_KEYS = ("image/height", "image/width", "image/channels", "image/class/label")
BYTES_KEYS = ("image/colorspace", "image/class/synset", "image/class/text", "image/format",
              "image/filename", "image/encoded")
INT_LIST_KEYS = ("image/object/bbox/label",)
# Every key of a record, in the (sorted) order they are serialised, so builds are byte-identical.
SCHEMA_KEYS = tuple(sorted(INT_KEYS + BYTES_KEYS + BBOX_KEYS + INT_LIST_KEYS))
# What every record must hold to be trained on (other tools' records often hold only these).
REQUIRED_KEYS = ("image/encoded", "image/class/label")

# Feature kinds: field numbers of the `Feature` oneof in tensorflow/core/example/feature.proto.
_BYTES, _FLOAT, _INT64 = 1, 2, 3


@dataclass(frozen=True)
class Box:
    """A bounding box in relative coordinates, each in [0, 1]."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


# --- protobuf encoding (wire format: varint tags, length-delimited messages, packed repeated) -----

def _varint_slow(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes, as protobuf does
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# Tags, key and box lengths, labels and image sides are all below 2**14: looking them up instead of
# looping over 7-bit groups is most of what encoding an Example costs in Python.
_SMALL_VARINTS = tuple(_varint_slow(i) for i in range(1 << 14))


def _varint(value: int) -> bytes:
    if 0 <= value < 16384:
        return _SMALL_VARINTS[value]
    return _varint_slow(value)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _SMALL_VARINTS[(number << 3) | 2] + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=64)
def _packed_floats(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}f")


def _feature(kind: int, values: Sequence[Any]) -> bytes:
    if kind == _BYTES:
        inner = b"".join([_field(1, v) for v in values])
    elif kind == _FLOAT:
        inner = _field(1, _packed_floats(len(values)).pack(*values)) if values else b""
    else:
        inner = _field(1, b"".join([_varint(int(v)) for v in values])) if values else b""
    return _field(kind, inner)


def _entry(key: str, kind: int, values: Sequence[Any]) -> bytes:
    """One `feature` map entry: {key: Feature}."""
    return _field(1, _field(1, key.encode()) + _field(2, _feature(kind, values)))


def _bytes_entry_header(key: str, length: int) -> bytes:
    """Everything of the entry {key: BytesList[value]} that precedes a `length`-byte value (so the
    value is not copied)."""
    varint = _varint
    inner = 1 + len(varint(length)) + length                  # BytesList.value
    feature = 1 + len(varint(inner)) + inner                  # Feature.bytes_list
    key_field = _key_field(key)
    return b"".join([b"\x0a", varint(len(key_field) + 1 + len(varint(feature)) + feature), key_field,
                     b"\x12", varint(feature), b"\x0a", varint(inner), b"\x0a", varint(length)])


@functools.lru_cache(maxsize=64)
def _key_field(key: str) -> bytes:
    """The map entry's key field: the same few keys in every record."""
    return _field(1, key.encode())


# Entries that are the same in every record, serialised once.
_CONSTANT = {
    "image/channels": _entry("image/channels", _INT64, [3]),
    "image/colorspace": _entry("image/colorspace", _BYTES, [b"RGB"]),
    "image/format": _entry("image/format", _BYTES, [b"JPEG"]),
}
_NO_BOXES = {key: _entry(key, _FLOAT, []) for key in BBOX_KEYS} | {
    "image/object/bbox/label": _entry("image/object/bbox/label", _INT64, [])}


def encode_example(*, encoded: bytes, filename: str, height: int, width: int, label: int,
                   synset: str, text: str, boxes: Sequence[Box] = ()) -> bytes:
    """One serialised tf.train.Example with exactly the inception keys (an RGB JPEG in `encoded`)."""
    name = filename.encode()
    before = _entries_before_encoded(label, synset, text) + _bytes_entry_header("image/encoded", len(encoded))
    after = b"".join([_filename_header(len(name)), name,
                      _entries_with_boxes(height, width, label, boxes) if boxes
                      else _entries_without_boxes(height, width)])
    size = len(before) + len(encoded) + len(after)
    return b"".join([b"\x0a", _varint(size), before, encoded, after])


# The keys sort as: channels, class/label, class/synset, class/text, colorspace | encoded | filename |
# format, height, object/bbox/*, width. The first block depends on the synset only and the last one,
# for the two thirds of ImageNet without boxes, on the image size only: each is serialised once and
# reused, which made encoding ~5x cheaper than joining 15 entries per record (benchmarks/imagenet_scale.py).
@functools.lru_cache(maxsize=4096)
def _entries_before_encoded(label: int, synset: str, text: str) -> bytes:
    return b"".join([_CONSTANT["image/channels"], _entry("image/class/label", _INT64, [label]),
                     _entry("image/class/synset", _BYTES, [synset.encode()]),
                     _entry("image/class/text", _BYTES, [text.encode()]), _CONSTANT["image/colorspace"]])


@functools.lru_cache(maxsize=256)
def _filename_header(length: int) -> bytes:
    return _bytes_entry_header("image/filename", length)


@functools.lru_cache(maxsize=8192)
def _entries_without_boxes(height: int, width: int) -> bytes:
    return b"".join([_CONSTANT["image/format"], _int_entry("image/height", height),
                     *[_NO_BOXES[key] for key in ("image/object/bbox/label", *sorted(BBOX_KEYS))],
                     _int_entry("image/width", width)])


@functools.lru_cache(maxsize=8192)
def _int_entry(key: str, value: int) -> bytes:
    return _entry(key, _INT64, [value])


@functools.lru_cache(maxsize=4096)
def _box_labels_entry(label: int, count: int) -> bytes:
    return _entry("image/object/bbox/label", _INT64, [label] * count)


@functools.lru_cache(maxsize=1024)
def _float_entry_header(key: str, count: int) -> bytes:
    """The entry {key: FloatList[count floats]} up to its packed floats, which depend on the record."""
    return _entry(key, _FLOAT, [0.0] * count)[: -4 * count]


def _entries_with_boxes(height: int, width: int, label: int, boxes: Sequence[Box]) -> bytes:
    count = len(boxes)
    pack = _packed_floats(count).pack
    return b"".join([
        _CONSTANT["image/format"], _int_entry("image/height", height), _box_labels_entry(label, count),
        _float_entry_header("image/object/bbox/xmax", count), pack(*[b.xmax for b in boxes]),
        _float_entry_header("image/object/bbox/xmin", count), pack(*[b.xmin for b in boxes]),
        _float_entry_header("image/object/bbox/ymax", count), pack(*[b.ymax for b in boxes]),
        _float_entry_header("image/object/bbox/ymin", count), pack(*[b.ymin for b in boxes]),
        _int_entry("image/width", width)])


# --- protobuf decoding (for verify; strict about the shapes we write) ----------------------------

class RecordFormatError(ValueError):
    """A record that is not a well-formed Example of our schema."""


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise RecordFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message; only varint and length-delimited fields."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise RecordFormatError("field runs past the end of the message")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise RecordFormatError("truncated fixed32")
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise RecordFormatError(f"unexpected wire type {wire}")
        yield number, wire, value


def _decode_feature(buf: bytes) -> list[Any]:
    values: list[Any] = []
    for kind, _wire, inner in _fields(buf):
        for _n, wire, item in _fields(inner):
            if kind == _BYTES:
                values.append(bytes(item))
            elif kind == _FLOAT:
                values.extend(struct.unpack(f"<{len(item) // 4}f", item) if wire == 2 else struct.unpack("<f", item))
            elif wire == 2:
                pos = 0
                while pos < len(item):
                    v, pos = _read_varint(item, pos)
                    values.append(v - (1 << 64) if v >= 1 << 63 else v)
            else:
                values.append(item - (1 << 64) if item >= 1 << 63 else item)
    return values


def decode_example(serialized: bytes) -> dict[str, list[Any]]:
    """{key: list of values} of a serialised Example, without TensorFlow; RecordFormatError if malformed."""
    out: dict[str, list[Any]] = {}
    for number, wire, features in _fields(memoryview(serialized)):  # slices without copying the image
        if number != 1 or wire != 2:
            continue
        for _n, _w, entry in _fields(features):
            key, value = None, b""
            for n, _w2, part in _fields(entry):
                if n == 1:
                    key = bytes(part).decode("utf-8", "replace")
                elif n == 2:
                    value = part
            if key is None:
                raise RecordFormatError("feature entry without a key")
            out[key] = _decode_feature(value)
    return out


def check_required(features: dict[str, list[Any]]) -> str | None:
    """What keeps a decoded record of another tool from being trained on (REQUIRED_KEYS), or None."""
    for key in REQUIRED_KEYS:
        if len(features.get(key, [])) != 1:
            return f"no {key} (found {', '.join(sorted(features)) or 'no keys'})"
    if not isinstance(features["image/encoded"][0], bytes):
        return "image/encoded holds numbers"
    label = features["image/class/label"][0]
    if not isinstance(label, int) or label < 0:
        return f"image/class/label is {label!r}, not a label >= 0"
    return None


def check_example(features: dict[str, list[Any]]) -> str | None:
    """What is wrong with a decoded record of our schema, or None if it is well-formed."""
    missing = [k for k in SCHEMA_KEYS if k not in features]
    if missing:
        return f"missing keys {', '.join(missing)}"
    for key in INT_KEYS + BYTES_KEYS:
        if len(features[key]) != 1:
            return f"{key} has {len(features[key])} values, expected 1"
    if any(not isinstance(features[k][0], int) for k in INT_KEYS):
        return "an integer key holds bytes"
    if any(not isinstance(features[k][0], bytes) for k in BYTES_KEYS):
        return "a bytes key holds numbers"
    counts = {len(features[k]) for k in BBOX_KEYS + INT_LIST_KEYS}
    if len(counts) != 1:
        return "bbox lists differ in length"
    if not all(0.0 <= v <= 1.0 for k in BBOX_KEYS for v in features[k]):
        return "bbox coordinate outside [0, 1]"
    if features["image/height"][0] <= 0 or features["image/width"][0] <= 0:
        return "non-positive image size"
    if not features["image/encoded"][0].startswith(b"\xff\xd8"):
        return "image/encoded is not a JPEG"
    return None


# --- TFRecord framing: length, masked crc32c(length), data, masked crc32c(data) ------------------

def _crc32c_function():
    try:
        import crc32c

        return crc32c.crc32c
    except ImportError:
        return None


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_function()
_TABLE = _crc32c_table()  # 256 entries, built once at import (well under a millisecond)


def crc32c_python(data: bytes) -> int:
    """CRC-32C in pure Python (Castagnoli polynomial, reflected): the fallback without the `crc32c` package."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (hardware-accelerated with the `crc32c` package, else pure Python)."""
    return _CRC32C(data) if _CRC32C is not None else crc32c_python(data)


def masked_crc32c(data: bytes) -> int:
    """The masked CRC that TFRecord files store."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class RecordWriter:
    """Writes an uncompressed TFRecord file, byte-identical to tf.io.TFRecordWriter's output.

    Without the `crc32c` package it delegates to tf.io.TFRecordWriter (pure-Python CRCs are too slow).
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._tf_writer = None
        self._file: BinaryIO | None = None
        if _CRC32C is None:
            import tensorflow as tf

            self._tf_writer = tf.io.TFRecordWriter(self.path)
        else:
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, record: bytes) -> None:
        if self._tf_writer is not None:
            self._tf_writer.write(record)
        else:
            length = struct.pack("<Q", len(record))
            self._file.write(length + struct.pack("<I", masked_crc32c(length)))
            self._file.write(record)  # written as is: no copy of a ~100 KB payload into a frame
            self._file.write(struct.pack("<I", masked_crc32c(record)))

    def close(self) -> None:
        if self._tf_writer is not None:
            self._tf_writer.close()
        elif self._file is not None:
            file, self._file = self._file, None
            file.close()  # flushes; closes the descriptor even when the flush fails (disk full)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CorruptRecord(Exception):
    """A TFRecord framing or CRC error at record `index` (0-based)."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"record {index}: {reason}")
        self.index = index
        self.reason = reason


def read_records(path: str | Path) -> Iterator[bytes]:
    """Yield the records of a TFRecord file; CorruptRecord (with the record index) on a bad frame/CRC."""
    with open(path, "rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise CorruptRecord(index, f"truncated header ({len(header)} of 12 bytes)")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if masked_crc32c(length_bytes) != length_crc:
                raise CorruptRecord(index, "length CRC mismatch")
            (length,) = struct.unpack("<Q", length_bytes)
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise CorruptRecord(index, "truncated record data")
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise CorruptRecord(index, "data CRC mismatch")
            yield data
            index += 1


# --- readers with TensorFlow ---------------------------------------------------------------------

def feature_spec() -> dict:
    """The tf.io parse spec of the schema: scalars as FixedLenFeature, box lists as VarLenFeature."""
    import tensorflow as tf

    spec = {key: tf.io.FixedLenFeature([], tf.int64) for key in INT_KEYS}
    spec.update({key: tf.io.FixedLenFeature([], tf.string) for key in BYTES_KEYS})
    spec.update({key: tf.io.VarLenFeature(tf.float32) for key in BBOX_KEYS})
    spec.update({key: tf.io.VarLenFeature(tf.int64) for key in INT_LIST_KEYS})
    return spec
