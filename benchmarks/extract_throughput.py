"""Images/s of `hpcvision data extract` (1 and 2 workers) against the I/O baseline, in one run.

The baseline is a plain sequential read of the same member bytes out of the same archive (offsets
known in advance; no writes, no parsing): what extract could reach if index lookups, file creation
and writes were free. Both read a page-cached archive, so the ratio shows extract's own overhead.

    .venv/bin/python benchmarks/extract_throughput.py            # 2,000 ImageNet-size JPEGs (~110 KB)
    .venv/bin/python benchmarks/extract_throughput.py --quick    # smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def photo_like_jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG with smooth structure plus grain, so its size is close to an ImageNet photo's."""
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-40, 41, (height, width, 3), dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def make_archive(
    folder: Path, synsets: int, per_synset: int, size: tuple[int, int]
) -> tuple[Path, Path, int]:
    """Images.tar (a tar of <wnid>.tar) and its list; a pool of distinct JPEGs is reused to save time."""
    rng = np.random.default_rng(0)
    pool = [photo_like_jpeg(rng, *size) for _ in range(min(64, synsets * per_synset))]
    archive, listing = folder / "Images.tar", folder / "list.txt"
    lines, total = [], 0
    with tarfile.open(archive, "w") as outer:
        for s in range(synsets):
            wnid = f"n{10000000 + s:08d}"
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for n in range(per_synset):
                    data = pool[(s * per_synset + n) % len(pool)]
                    info = tarfile.TarInfo(f"{wnid}_{n}.JPEG")
                    info.size = len(data)
                    inner.addfile(info, io.BytesIO(data))
                    lines.append(f"{wnid} {wnid}_{n}")
                    total += len(data)
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = inner_bytes.tell()
            inner_bytes.seek(0)
            outer.addfile(info, inner_bytes)
    listing.write_text("\n".join(lines) + "\n")
    return archive, listing, total


def member_ranges(archive: Path) -> list[tuple[int, int]]:
    """(absolute offset, size) of every image, found before the clock starts."""
    ranges = []
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                ranges += [(member.offset_data + m.offset_data, m.size) for m in inner.getmembers()]
    return ranges


def baseline_read(archive: Path, ranges: list[tuple[int, int]]) -> float:
    """Seconds to read every member's bytes in archive order, discarding them."""
    start = time.perf_counter()
    fd = os.open(archive, os.O_RDONLY)
    try:
        for offset, size in ranges:
            if len(os.pread(fd, size, offset)) != size:
                raise RuntimeError("short read")
    finally:
        os.close(fd)
    return time.perf_counter() - start


def write_floor(archive: Path, ranges: list[tuple[int, int]], out: Path) -> float:
    """Seconds to read every member and write it to its own new file (tmp name + rename, as extract).

    Not the target's baseline, but it shows how much of extract's time this file system's file
    creation takes by itself.
    """
    start = time.perf_counter()
    fd = os.open(archive, os.O_RDONLY)
    try:
        out.mkdir()
        for number, (offset, size) in enumerate(ranges):
            tmp, final = out / f".{number}.tmp", out / f"{number}.JPEG"
            with open(tmp, "wb") as handle:
                handle.write(os.pread(fd, size, offset))
            os.replace(tmp, final)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def run_extract(archive: Path, listing: Path, out: Path, workers: int) -> float:
    """Seconds for one `hpcvision data extract` into a fresh folder (index built inside the run)."""
    from hpcvision.cli import main

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = main(
            [
                "data",
                "extract",
                "--images",
                str(archive),
                "--list",
                str(listing),
                "--out",
                str(out),
                "--workers",
                str(workers),
            ]
        )
    elapsed = time.perf_counter() - start
    if code != 0 or "skipped 0" not in printed.getvalue():
        raise RuntimeError(f"extract failed ({code}): {printed.getvalue()}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--synsets", type=int, default=20)
    parser.add_argument("--per-synset", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest counts")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the archive goes (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HPCVISION_PROGRESS", "0")
    synsets, per_synset, size = (
        (4, 10, (96, 80)) if args.quick else (args.synsets, args.per_synset, (400, 350))
    )
    repeats = 1 if args.quick else args.repeats

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        archive, listing, total_bytes = make_archive(folder, synsets, per_synset, size)
        images = synsets * per_synset
        ranges = member_ranges(archive)
        assert len(ranges) == images
        baseline = min(
            baseline_read(archive, ranges) for _ in range(repeats + 1)
        )  # first read warms the cache
        floor = min(write_floor(archive, ranges, folder / f"floor-{r}") for r in range(repeats))
        timings = {}
        for workers in (1, 2):
            timings[workers] = min(
                run_extract(archive, listing, folder / f"out-w{workers}-{r}", workers) for r in range(repeats)
            )
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}"
    )
    print(
        f"archive: {images} images in {synsets} synset tars, {total_bytes / images / 1024:.0f} KB/image, "
        f"{total_bytes / 2**20:.0f} MiB (page-cached)"
    )
    base_rate = images / baseline
    print(
        f"baseline (sequential read of the member bytes): {base_rate:10.0f} img/s  "
        f"{total_bytes / baseline / 2**20:8.0f} MiB/s"
    )
    print(
        f"write floor (read + write each file, no index):  {images / floor:10.0f} img/s  "
        f"{total_bytes / floor / 2**20:8.0f} MiB/s  = {baseline / floor:.3f} x baseline"
    )
    for workers, seconds in timings.items():
        rate = images / seconds
        print(
            f"extract --workers {workers}:                       {rate:10.0f} img/s  "
            f"{total_bytes / seconds / 2**20:8.0f} MiB/s  = {rate / base_rate:.3f} x baseline, "
            f"{floor / seconds:.2f} x write floor"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
