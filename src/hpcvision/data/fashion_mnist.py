"""Fashion-MNIST as Debian's `dataset-fashion-mnist` ships it: four IDX files, read into NumPy.

The one reader for `data sample`, the cnn tutorial and the demo-recipe benchmark. IDX is a tiny
format: a big-endian magic number (0x0000 08 NDIM = unsigned bytes, NDIM dimensions), the size of each
dimension as a 32-bit integer, then the raw bytes.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hpcvision.errors import UserError

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
MISSING_HINT = "install Debian's dataset-fashion-mnist or pass --fashion-mnist DIR"


class FashionMNIST(NamedTuple):
    """The two splits as uint8 arrays: images (n, 28, 28), labels (n,) in 0-9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a numpy array; UserError naming the file if malformed."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read IDX file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise UserError(f"{path}: IDX data is {len(raw) - header} bytes, header says {int(np.prod(shape))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def idx_path(folder: Path, stem: str) -> Path | None:
    """`folder/stem.gz` or else `folder/stem`, whichever exists first; None if neither."""
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.exists()), None)


def has_fashion_mnist(folder: Path) -> bool:
    """True when all four IDX files are in `folder` (gzipped or not)."""
    return all(idx_path(folder, f"{prefix}-{kind}") for prefix in ("train", "t10k")
               for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def _read_split(folder: Path, prefix: str, hint: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = idx_path(folder, stem)
        if path is None:
            raise UserError(f"{folder}: no {stem}[.gz] ({hint})")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise UserError(f"{folder}: {prefix} labels go up to {labels.max()}, expected 0-9")
    return images, labels


def load_fashion_mnist(folder: Path, *, hint: str = MISSING_HINT) -> FashionMNIST:
    """Both splits from the four IDX files in `folder`; UserError (ending with `hint`) if one is missing."""
    return FashionMNIST(*_read_split(folder, "train", hint), *_read_split(folder, "t10k", hint))
