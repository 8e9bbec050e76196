"""Small ImageNet-layout archives for the data tests: real JPEGs (Pillow), tars built with tarfile."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from PIL import Image

# A pid no process can have (Linux pids stop at 2**22): the writer of a leftover temporary that died.
DEAD_PID = 2**22 + 1


def jpeg_bytes(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    """A small RGB JPEG whose pixels depend on `seed` (so each image's bytes differ)."""
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    image.putpixel((seed % size[0], 0), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def voc_xml(wnid: str, name: str) -> bytes:
    """A minimal PASCAL-VOC annotation naming its image."""
    return (
        f"<annotation><filename>{name}</filename><size><width>24</width><height>20</height></size>"
        f"<object><name>{wnid}</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>18</ymax>"
        f"</bndbox></object></annotation>"
    ).encode()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_symlink(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def tar_bytes(
    members: dict[str, bytes],
    mode: str = "w",
    links: dict[str, str] | None = None,
    specials: dict[str, tuple[bytes, str]] | None = None,
) -> bytes:
    """An in-memory tar (mode "w") or tar.gz (mode "w:gz") of name -> bytes, plus symlinks and
    `specials` (name -> (tarfile type, link target): hard links, devices, fifos)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name, data in members.items():
            add_bytes(tar, name, data)
        for name, target in (links or {}).items():
            add_symlink(tar, name, target)
        for name, (kind, target) in (specials or {}).items():
            add_symlink(tar, name, target, kind)
    return out.getvalue()


def sample_images(synsets: dict[str, int]) -> dict[str, dict[str, bytes]]:
    """{wnid: {name: jpeg}} with `count` images per synset, named `<wnid>_<n>`."""
    seed = 0
    images: dict[str, dict[str, bytes]] = {}
    for wnid, count in synsets.items():
        images[wnid] = {}
        for n in range(1, count + 1):
            seed += 1
            images[wnid][f"{wnid}_{n}"] = jpeg_bytes(seed)
    return images


def write_images_tar(
    path: Path, images: dict[str, dict[str, bytes]], extra: dict[str, bytes] | None = None
) -> Path:
    """`Images.tar`: one `<wnid>.tar` per synset holding `<name>.JPEG`; `extra` adds raw outer members."""
    outer = {
        f"{wnid}.tar": tar_bytes({f"{name}.JPEG": data for name, data in members.items()})
        for wnid, members in images.items()
    }
    outer.update(extra or {})
    path.write_bytes(tar_bytes(outer))
    return path


def write_annotations_tgz(
    path: Path,
    images: dict[str, dict[str, bytes]],
    skip: set[str] = frozenset(),
    folders: dict[str, str] | None = None,
) -> Path:
    """`Annotation.tar.gz`: one `<wnid>.tar.gz` per synset holding `Annotation/<wnid>/<name>.xml`;
    `folders` puts a named image's XML (naming that synset) in another synset's folder instead."""
    inner: dict[str, dict[str, bytes]] = {wnid: {} for wnid in images}
    for wnid, members in images.items():
        for name in members:
            folder = (folders or {}).get(name, wnid)
            if name not in skip:
                inner.setdefault(folder, {})[f"Annotation/{folder}/{name}.xml"] = voc_xml(folder, name)
    outer = {f"{wnid}.tar.gz": tar_bytes(members, mode="w:gz") for wnid, members in inner.items()}
    path.write_bytes(gzip.compress(tar_bytes(outer)))
    return path


def write_list(path: Path, images: dict[str, dict[str, bytes]], extra_lines: tuple[str, ...] = ()) -> Path:
    """A course-format list `<wnid> <name>` of every image, then `extra_lines`."""
    lines = [f"{wnid} {name}" for wnid, members in images.items() for name in members]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def png_bytes(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    """A small RGB PNG whose pixels depend on `seed` (an ImageFolder tree may hold PNGs)."""
    image = Image.new("RGB", size, ((seed * 53) % 256, (seed * 17) % 256, (seed * 29) % 256))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
