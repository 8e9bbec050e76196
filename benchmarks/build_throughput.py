"""Records/s of `hpcvision data build` against its two baselines, measured in the same run.

    .venv/bin/python benchmarks/build_throughput.py            # 3000 images of 400x350, ~110 KB
    .venv/bin/python benchmarks/build_throughput.py --quick    # smoke run (the test suite runs this)

On a generated Images.tar (one <wnid>.tar per synset, like ImageNet; cached under --cache keyed by
the parameters, so reruns skip generation) it times:
  build 1 / 2 workers  the real command path (index warm, as after the first run on an archive);
  (a) I/O limit        the same member bytes read from the archive into TFRecords, no parsing;
  (b) naive            decode + re-encode every image (Pillow, quality 95) into TFRecords.
Targets: build >= 0.5 x (a) and build >= 5 x (b). Each figure is the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hpcvision.data.build import build
from hpcvision.data.config import BuildConfig
from hpcvision.data.lists import read_file_list
from hpcvision.data.records import RecordWriter, encode_example
from hpcvision.data.sources import open_images

SYNSETS = 10


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields plus texture: JPEG sizes like ImageNet photos (~110 KB at 400x350, q95)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
        image[..., c] = 128 + 80 * np.sin(x * fx + phase) * np.cos(y * fy)
    image += rng.normal(0, 24, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_archive(folder: Path, count: int, width: int, height: int, quality: int) -> tuple[Path, Path, Path]:
    """(Images.tar, list, synsets) under `folder`, generated once per parameter set."""
    key = hashlib.sha256(f"v1 {count} {width} {height} {quality}".encode()).hexdigest()[:12]
    root = folder / f"build-bench-{key}"
    archive, file_list, synsets = root / "Images.tar", root / "list.txt", root / "synsets.txt"
    if archive.exists() and file_list.exists() and synsets.exists():
        return archive, file_list, synsets
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    wnids = [f"n{10000000 + k:08d}" for k in range(SYNSETS)]
    lines = []
    with tarfile.open(root / "Images.tar.tmp", "w") as outer:
        for k, wnid in enumerate(wnids):
            inner_buf = io.BytesIO()
            with tarfile.open(fileobj=inner_buf, mode="w") as inner:
                for i in range(k, count, SYNSETS):
                    buf = io.BytesIO()
                    photo_like(rng, width, height).save(buf, format="JPEG", quality=quality)
                    info = tarfile.TarInfo(f"{wnid}_{i}.JPEG")
                    info.size = buf.tell()
                    buf.seek(0)
                    inner.addfile(info, buf)
                    lines.append(f"{wnid} {wnid}_{i}")
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = inner_buf.tell()
            inner_buf.seek(0)
            outer.addfile(info, inner_buf)
    os.replace(root / "Images.tar.tmp", archive)
    synsets.write_text("".join(f"{w}\n" for w in wnids))
    file_list.write_text("".join(f"{line}\n" for line in lines))
    return archive, file_list, synsets


def best_of(repeats: int, run) -> float:
    """Seconds of the fastest of `repeats` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def baseline_io(archive: Path, file_list: Path, index_dir: Path, out: Path) -> int:
    """(a): the listed members' bytes, read by offset from the archive, framed into one TFRecord file."""
    items = read_file_list(file_list).images
    source = open_images(archive, index_dir=index_dir)
    with RecordWriter(out) as writer:
        for fetched in source.fetch(items):
            writer.write(fetched.data)
    return len(items)


def baseline_naive(archive: Path, file_list: Path, index_dir: Path, out: Path, limit: int) -> int:
    """(b): decode and re-encode every image, then write inception Examples."""
    items = read_file_list(file_list).images[:limit]
    source = open_images(archive, index_dir=index_dir)
    with RecordWriter(out) as writer:
        for fetched in source.fetch(items):
            image = Image.open(io.BytesIO(fetched.data)).convert("RGB")
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=95)
            writer.write(encode_example(encoded=buf.getvalue(), filename=f"{fetched.item.name}.JPEG",
                                        height=image.height, width=image.width, label=1,
                                        synset=fetched.item.wnid, text=fetched.item.wnid))
    return len(items)


def run_build(archive: Path, file_list: Path, synsets: Path, index_dir: Path, out: Path, workers: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    config = BuildConfig(images=archive, file_list=file_list, synsets=synsets, out=out, shards=8,
                         workers=workers, rank=0, ranks=1, index_dir=index_dir)
    with contextlib.redirect_stdout(io.StringIO()):  # the build's own summary would clutter the figures
        code = build(config)
    if code != 0:
        raise SystemExit("build failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (60 small images, 1 repeat)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--height", type=int, default=350)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--naive-images", type=int, default=500, help="images for the slow baseline (b)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default: 1 2)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hpcvision-bench",
                        help="where the generated archive is kept between runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.width, args.height, args.naive_images, args.repeats = 60, 120, 100, 20, 1
    os.environ.setdefault("HPCVISION_PROGRESS", "0")
    start = time.perf_counter()
    archive, file_list, synsets = make_archive(args.cache, args.images, args.width, args.height, args.quality)
    mean_kb = archive.stat().st_size / args.images / 1024
    print(f"archive {archive}: {args.images} JPEGs {args.width}x{args.height}, mean {mean_kb:.0f} KB "
          f"(ready in {time.perf_counter() - start:.1f} s); {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="build-bench-") as tmp:
        work, index_dir = Path(tmp), Path(tmp) / "index"
        open_images(archive, index_dir=index_dir)  # index once, as a first build would
        baseline_io(archive, file_list, index_dir, work / "warm")  # warm the page cache and the inner indexes
        t_io = best_of(args.repeats, lambda: baseline_io(archive, file_list, index_dir, work / "io"))
        t_build = {w: best_of(args.repeats, lambda w=w: run_build(archive, file_list, synsets, index_dir,
                                                                   work / f"b{w}", w))
                   for w in args.workers}
        n_naive = min(args.naive_images, args.images)
        t_naive = best_of(1, lambda: baseline_naive(archive, file_list, index_dir, work / "naive", n_naive))
    io_rate, naive_rate = args.images / t_io, n_naive / t_naive
    build_rate = {w: args.images / t for w, t in t_build.items()}
    print(f"(a) I/O limit, bytes into TFRecords   {io_rate:9.0f} records/s")
    print(f"(b) naive decode + re-encode          {naive_rate:9.0f} records/s  ({n_naive} images)")
    for w, value in build_rate.items():
        print(f"build, {w} worker{'s' if w > 1 else ' '}                       {value:9.0f} records/s")
    for w, value in build_rate.items():
        print(f"ratio build {w} worker{'s' if w > 1 else ''} / (a) = {value / io_rate:.2f} (target >= 0.5); "
              f"/ (b) = {value / naive_rate:.1f} (target >= 5)")
    best = max(build_rate.values())
    ok = best >= 0.5 * io_rate and best >= 5 * naive_rate
    print(f"targets {'met' if ok else 'NOT met'} by the fastest build ({best:.0f} records/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
