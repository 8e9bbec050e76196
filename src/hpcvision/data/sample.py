"""`hpcvision data sample`: a small ImageNet in the real archive layout, from real images.

Fashion-MNIST (Debian `dataset-fashion-mnist`) becomes ten WordNet noun synsets; each 28x28 image is
upscaled to an RGB JPEG and gets a PASCAL-VOC box around its non-background pixels. `--source
synthetic` draws class-distinct shapes instead, so tests run where the Debian package is absent.

Output (OUT): Images.tar (one <wnid>.tar per class of <wnid>_<n>.JPEG), Annotation.tar.gz (one
<wnid>.tar.gz per class of Annotation/<wnid>/<wnid>_<n>.xml), synsets.txt, metadata.txt,
train_files.txt, validation_files.txt.
"""

from __future__ import annotations

import gzip
import io
import logging
import multiprocessing
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from hpcvision.data.config import SampleConfig
from hpcvision.data.fashion_mnist import load_fashion_mnist
from hpcvision.data.images import JPEG_QUALITY
from hpcvision.data.lists import IMAGE_SUFFIX
from hpcvision.errors import UserError
from hpcvision.files import atomic_path, write_atomic

log = logging.getLogger(__name__)

# Fashion-MNIST label order -> WordNet 3.0 noun synsets (wnid = "n" + synset offset; words as in
# WordNet). ILSVRC-2012 classes where one fits: jersey/T-shirt (610), sandal (774), running shoe (770).
FASHION_SYNSETS: tuple[tuple[str, str], ...] = (
    ("n03595614", "jersey, T-shirt, tee shirt"),       # 0 T-shirt/top
    ("n04489008", "trouser, pant"),                    # 1 Trouser
    ("n04021028", "pullover, slipover"),               # 2 Pullover
    ("n03236735", "dress, frock"),                     # 3 Dress
    ("n03057021", "coat"),                             # 4 Coat
    ("n04133789", "sandal"),                           # 5 Sandal
    ("n04197391", "shirt"),                            # 6 Shirt
    ("n04120489", "running shoe"),                     # 7 Sneaker
    ("n02774152", "bag, handbag, pocketbook, purse"),  # 8 Bag
    ("n02872752", "boot"),                             # 9 Ankle boot
)

# Synthetic classes: the same synsets, drawn as ten distinct shapes.
SYNTHETIC_SHAPES = ("disc", "square", "triangle", "hbars", "vbars", "cross", "ring", "diamond",
                    "hbox", "vbox")

VALIDATION_ID_OFFSET = {"fashion-mnist": 60000, "synthetic": 1_000_000}
SYNTHETIC_DEFAULT_PER_CLASS = 100
FOREGROUND_THRESHOLD = 16  # Fashion-MNIST background is 0; faint anti-aliasing stays outside the box
TAR_MTIME = 1_262_304_000  # fixed member times (2010-01-01) so the same sample gives identical archives
# gzip records a file name in its header: the temporary name earlier versions wrote under, so the same
# sample stays byte-identical across versions.
GZIP_HEADER_NAME = "Annotation.tar.gz.tmp"
MISSING_HINT = "install Debian's dataset-fashion-mnist, pass --fashion-mnist DIR, or use --source synthetic"


@dataclass
class ClassJob:
    """The images of one class, both splits: what one worker turns into two inner tars."""

    wnid: str
    class_index: int
    source: str
    size: int
    seed: int
    train: list[tuple[int, np.ndarray | None]]       # (image id, 28x28 uint8 or None for synthetic)
    validation: list[tuple[int, np.ndarray | None]]


# --- drawing ---------------------------------------------------------------------------------------

def tight_box(gray: np.ndarray, threshold: int = FOREGROUND_THRESHOLD) -> tuple[int, int, int, int] | None:
    """(xmin, ymin, xmax, ymax) edges (max exclusive) of the pixels above `threshold`, or None."""
    rows = np.flatnonzero((gray > threshold).any(axis=1))
    cols = np.flatnonzero((gray > threshold).any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def fashion_image(gray28: np.ndarray, size: int) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """Upscaled RGB image and its box in output pixels (box taken on the original 28x28 grid)."""
    image = Image.fromarray(gray28, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
    box = tight_box(gray28)
    if box is None:
        return image, None
    scale = size / gray28.shape[0]
    x0, y0, x1, y1 = box
    return image, (int(x0 * scale), int(y0 * scale), min(size, round(x1 * scale)), min(size, round(y1 * scale)))


def synthetic_image(class_index: int, size: int, rng: np.random.Generator) -> tuple[Image.Image, tuple]:
    """A shape of the class's kind with random position, size and colours; its box in pixels."""
    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    noise = rng.integers(0, 25, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(np.clip(noise + np.array(background, np.uint8), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    extent = int(rng.integers(size * 2 // 5, size * 4 // 5 + 1))
    x0 = int(rng.integers(0, size - extent + 1))
    y0 = int(rng.integers(0, size - extent + 1))
    x1, y1 = x0 + extent, y0 + extent
    cx, cy, w = (x0 + x1) // 2, (y0 + y1) // 2, max(2, extent // 6)
    shape = SYNTHETIC_SHAPES[class_index % len(SYNTHETIC_SHAPES)]
    if shape == "disc":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=colour)
    elif shape == "hbars":
        for y in range(y0, y1, 2 * w):
            draw.rectangle((x0, y, x1 - 1, min(y + w, y1) - 1), fill=colour)
    elif shape == "vbars":
        for x in range(x0, x1, 2 * w):
            draw.rectangle((x, y0, min(x + w, x1) - 1, y1 - 1), fill=colour)
    elif shape == "cross":
        draw.rectangle((cx - w, y0, cx + w - 1, y1 - 1), fill=colour)
        draw.rectangle((x0, cy - w, x1 - 1, cy + w - 1), fill=colour)
    elif shape == "ring":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), outline=colour, width=w)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=colour)
    elif shape == "hbox":
        y0, y1 = cy - extent // 4, cy + extent // 4
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=w)
    else:  # vbox
        x0, x1 = cx - extent // 4, cx + extent // 4
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=w)
    return image, (x0, y0, x1, y1)


def voc_xml(wnid: str, name: str, size: int, box: tuple[int, int, int, int] | None) -> bytes:
    """PASCAL-VOC annotation of one image, as in ImageNet's Annotation/<wnid>/<name>.xml."""
    objects = ""
    if box is not None:
        xmin, ymin, xmax, ymax = box
        objects = (f"\t<object>\n\t\t<name>{escape(wnid)}</name>\n\t\t<pose>Unspecified</pose>\n"
                   f"\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n"
                   f"\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
                   f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    return (f"<annotation>\n\t<folder>{escape(wnid)}</folder>\n\t<filename>{escape(name)}</filename>\n"
            f"\t<source>\n\t\t<database>hpcvision sample</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n"
            f"\t</size>\n\t<segmented>0</segmented>\n{objects}</annotation>\n").encode()


# --- tars ------------------------------------------------------------------------------------------

def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(members: Sequence[tuple[str, bytes]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    if gz:
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as zipped, \
                tarfile.open(fileobj=zipped, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                _add_member(tar, name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                _add_member(tar, name, data)
    return buf.getvalue()


def make_class(job: ClassJob) -> tuple[str, bytes, bytes]:
    """(wnid, <wnid>.tar bytes, <wnid>.tar.gz bytes) for one class."""
    images, annotations = [], []
    rng = np.random.default_rng([job.seed, job.class_index])
    for image_id, pixels in job.train + job.validation:
        name = f"{job.wnid}_{image_id}"
        if pixels is None:
            image, box = synthetic_image(job.class_index, job.size, rng)
        else:
            image, box = fashion_image(pixels, job.size)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
        images.append((f"{name}{IMAGE_SUFFIX}", buf.getvalue()))
        annotations.append((f"Annotation/{job.wnid}/{name}.xml", voc_xml(job.wnid, name, job.size, box)))
    return job.wnid, _tar_bytes(images), _tar_bytes(annotations, gz=True)


def _pick(indices: np.ndarray, count: int | None, rng: np.random.Generator) -> np.ndarray:
    if count is None or count >= len(indices):
        return indices
    return np.sort(rng.choice(indices, size=count, replace=False))


def class_jobs(config: SampleConfig) -> list[ClassJob]:
    """One job per class with the chosen image ids (and pixels for Fashion-MNIST)."""
    rng = np.random.default_rng(config.seed)
    offset = VALIDATION_ID_OFFSET[config.source]
    jobs = []
    if config.source == "synthetic":
        count = config.per_class or SYNTHETIC_DEFAULT_PER_CLASS
        for k, (wnid, _words) in enumerate(FASHION_SYNSETS):
            jobs.append(ClassJob(wnid, k, "synthetic", config.size, config.seed,
                                 train=[(i + 1, None) for i in range(count)],
                                 validation=[(offset + i + 1, None) for i in range(count)]))
        return jobs
    data = load_fashion_mnist(config.fashion_mnist, hint=MISSING_HINT)
    splits = {"train": (data.train_images, data.train_labels), "validation": (data.test_images, data.test_labels)}
    for k, (wnid, _words) in enumerate(FASHION_SYNSETS):
        chosen = {}
        for split, (images, labels) in splits.items():
            picked = _pick(np.flatnonzero(labels == k), config.per_class, rng)
            base = 0 if split == "train" else offset
            chosen[split] = [(base + int(i) + 1, images[i]) for i in picked]
        jobs.append(ClassJob(wnid, k, "fashion-mnist", config.size, config.seed, chosen["train"],
                             chosen["validation"]))
    return jobs


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    write_atomic(path, "".join(f"{line}\n" for line in lines))


def _write_archives(jobs: list[ClassJob], workers: int, images_path: Path, annotations_path: Path) -> None:
    """Images.tar and Annotation.tar.gz of every class, made by `workers` processes in class order."""
    with tarfile.open(images_path, "w", format=tarfile.USTAR_FORMAT) as images_tar, \
            open(annotations_path, "wb") as raw, \
            gzip.GzipFile(GZIP_HEADER_NAME, "wb", fileobj=raw, mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.USTAR_FORMAT) as annotations_tar:
        if workers == 1:
            results = map(make_class, jobs)
            for wnid, inner_images, inner_annotations in results:
                _add_member(images_tar, f"{wnid}.tar", inner_images)
                _add_member(annotations_tar, f"{wnid}.tar.gz", inner_annotations)
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for wnid, inner_images, inner_annotations in pool.imap(make_class, jobs):
                    _add_member(images_tar, f"{wnid}.tar", inner_images)
                    _add_member(annotations_tar, f"{wnid}.tar.gz", inner_annotations)


def make_sample(config: SampleConfig) -> dict[str, int]:
    """Write the sample under `config.out`; returns {"train": n, "validation": n} image counts."""
    jobs = class_jobs(config)
    out = config.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output folder: {exc.strerror or exc}") from None
    workers = config.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(jobs)))
    with atomic_path(out / "Annotation.tar.gz") as annotations_tmp, atomic_path(out / "Images.tar") as images_tmp:
        _write_archives(jobs, workers, images_tmp, annotations_tmp)
    _write_lines(out / "synsets.txt", [wnid for wnid, _ in FASHION_SYNSETS])
    _write_lines(out / "metadata.txt", [f"{wnid}\t{words}" for wnid, words in FASHION_SYNSETS])
    counts = {}
    for split, filename in (("train", "train_files.txt"), ("validation", "validation_files.txt")):
        lines = [f"{job.wnid} {job.wnid}_{image_id}" for job in jobs for image_id, _ in getattr(job, split)]
        _write_lines(out / filename, lines)
        counts[split] = len(lines)
    return counts
