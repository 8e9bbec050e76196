"""The images a data command works on: the lines of --list, or without one every image the source holds.

`data list` writes the second as a file in the course's list format, so a user can read, cut or split
it before building.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from hpcvision.data.config import ListConfig
from hpcvision.data.config import index_dir as default_index_dir
from hpcvision.data.lists import FileList, list_text, read_file_list, skip_unknown
from hpcvision.data.sources import Source, open_images
from hpcvision.errors import UserError
from hpcvision.files import write_atomic

log = logging.getLogger(__name__)


class SourceOptions(Protocol):
    """The options of build and extract that say where images come from."""

    images: Path
    val_labels: Path | None
    val_label_ids: Path | None
    index_dir: Path | None
    out: Path


def listed_from_source(source: Source, synsets: Collection[str] | None = None) -> FileList:
    """Every image `source` holds as a list (`listed`, `skipped` as a list file's); given `synsets`,
    images of other synsets are skipped as unknown, as a list file's lines would be."""
    result = source.list_all()
    return result if synsets is None else skip_unknown(result, synsets, lambda item: f"{item.wnid}/{item.name}")


def listed_images(list_file: Path | None, options: SourceOptions, synsets: Collection[str] | None) -> FileList:
    """The images of `list_file`, or without one every image `options.images` holds (from its index)."""
    if list_file is not None:
        return read_file_list(list_file, synsets)
    return listed_from_source(_open(options, options.out), synsets)


def _open(options: SourceOptions | ListConfig, out_folder: Path) -> Source:
    """The image source the options name, its index cached under `options.index_dir` or OUT's default."""
    return open_images(options.images, val_labels=options.val_labels, val_label_ids=options.val_label_ids,
                       index_dir=default_index_dir(options.index_dir, out_folder))


def write_list(config: ListConfig) -> int:
    """`data list`: every image of `config.images` written to `config.out` as a course-format list;
    what is not a usable image is counted and its first few rows logged."""
    source = _open(config, config.out.parent)  # --out is the list file: the index goes beside it
    found = listed_from_source(source)
    if not found.images:
        raise UserError(f"{config.images}: no images found ({len(found.skipped)} other entries)")
    write_atomic(config.out, list_text(found.images))
    print(f"listed {len(found.images)} images in {len(source.synsets() or {i.wnid for i in found.images})} "
          f"synsets from {config.images} -> {config.out}")
    for where, reason in found.skipped[:5]:
        log.warning("not listed: %s: %s", where, reason)
    if found.skipped:
        log.warning("%d entries not listed (first %d above)", len(found.skipped), min(5, len(found.skipped)))
    return 0
