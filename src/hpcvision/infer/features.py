"""`hpcvision features`: penultimate-layer embeddings of a folder of images, as a NumPy array."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hpcvision.errors import UserError
from hpcvision.infer.predict import Classifier, read_and_preprocess
from hpcvision.progress import progress

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


def list_images(image_dir: str | Path) -> list[Path]:
    """Image files directly in `image_dir` (by suffix, case-insensitive), sorted by name."""
    directory = Path(image_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def write_features(
    classifier: Classifier, image_dir: str | Path, out_path: str | Path, *, batch_size: int = 64
) -> tuple[int, list[tuple[Path, str]]]:
    """Write `out_path` (.npy, float32 [N, D]) and its `.txt` of file names, row by row.

    Returns (rows written, [(file, why skipped)]); unreadable images are skipped, not fatal.
    """
    files = list_images(image_dir)
    if not files:
        raise UserError(f"{image_dir}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    rows: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[tuple[Path, str]] = []
    batch: list = []
    with progress(len(files), "features") as bar:
        for i, path in enumerate(files):
            try:
                batch.append(read_and_preprocess(classifier, path))
                names.append(path.name)
            except UserError as exc:
                skipped.append((path, str(exc)))
            if batch and (len(batch) == batch_size or i == len(files) - 1):
                rows.append(classifier.features(np.stack(batch)))
                batch = []
            bar.update(1)
    if not rows:
        raise UserError(f"{image_dir}: none of the {len(files)} images could be read")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    embeddings = np.concatenate(rows).astype(np.float32).reshape(len(names), -1)
    with open(out, "wb") as f:  # exactly this name (np.save would append .npy to other names)
        np.save(f, embeddings)
    out.with_suffix(".txt").write_text("".join(f"{name}\n" for name in names))
    return len(names), skipped
