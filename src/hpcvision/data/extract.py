"""`hpcvision data extract`: copy exactly the listed images (and their XML) out of ImageNet archives.

Writes `OUT/images/<wnid>/<name>.JPEG` and `OUT/annotations/<wnid>/<name>.xml`. Work is split by
synset: across ranks (`--rank/--ranks`, disjoint slices that together cover the list) and, within a
rank, across `--workers` processes. Files land under their final name only when complete (temporary
name + `os.replace`), and a file already present with the member's size is kept, so a rerun resumes.
Every listed image not written goes to `OUT/extract-report-rank<i>.tsv` with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import stat
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcvision.data.lists import IMAGE_SUFFIX, ListedImage, read_file_list, read_synsets
from hpcvision.data.sources import XML_SUFFIX, Source, open_annotations, open_images
from hpcvision.errors import UserError
from hpcvision.files import temporary_path

log = logging.getLogger(__name__)

INDEX_FOLDER = ".hpcvision-index"


# ---------------------------------------------------------------------------------------------------
# Splitting the work


def split_by_synset(items: Sequence[ListedImage], parts: int) -> list[list[ListedImage]]:
    """Whole synsets to `parts` slices balanced by image count, each in list order; deterministic."""
    sizes: dict[str, int] = defaultdict(int)
    for item in items:
        sizes[item.wnid] += 1
    part_of: dict[str, int] = {}
    loads = [0] * parts
    # Largest synsets first, each to the least loaded slice (ties: lowest index) balances well.
    for wnid in sorted(sizes, key=lambda w: (-sizes[w], w)):
        part_of[wnid] = min(range(parts), key=lambda k: (loads[k], k))
        loads[part_of[wnid]] += sizes[wnid]
    slices: list[list[ListedImage]] = [[] for _ in range(parts)]
    for item in items:
        slices[part_of[item.wnid]].append(item)
    return slices


def rank_slice(items: Sequence[ListedImage], rank: int, ranks: int) -> list[ListedImage]:
    """The images rank `rank` of `ranks` extracts; slices of all ranks are disjoint and cover `items`."""
    return split_by_synset(items, ranks)[rank]


def synset_groups(items: Sequence[ListedImage]) -> list[list[ListedImage]]:
    """One task per synset, largest first, so parallel workers finish together."""
    groups: dict[str, list[ListedImage]] = defaultdict(list)
    for item in items:
        groups[item.wnid].append(item)
    return [groups[w] for w in sorted(groups, key=lambda w: (-len(groups[w]), w))]


# ---------------------------------------------------------------------------------------------------
# Copying one synset


@dataclass
class SynsetResult:
    """What happened to one task's images: counts and (file, reason) rows for the reports."""

    images: int = 0
    written: int = 0
    present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    xml_written: int = 0
    xml_missing: list[tuple[str, str]] = field(default_factory=list)


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename: a reader never sees a partial file."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> None:
    """Delete partial files an interrupted run left in a synset folder (only one process owns it)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(".") and ".tmp" in entry.name and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def already_present(path: Path, size: int | None) -> bool:
    """True when `path` is a regular file of the expected size (a previous run wrote it)."""
    if size is None:
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == size


def copy_members(
    source: Source, items: list[ListedImage], folder: Path, suffix: str
) -> tuple[list[ListedImage], int, list[tuple[ListedImage, str]]]:
    """Copy `items` from `source` to `folder/<wnid>/<name><suffix>`; (done items, newly written, problems)."""
    for wnid in {item.wnid for item in items}:
        remove_stale_temporaries(folder / wnid)
    sizes = source.sizes(items)
    done: list[ListedImage] = []
    todo: list[ListedImage] = []
    for item in items:
        (
            done if already_present(folder / item.wnid / f"{item.name}{suffix}", sizes.get(item)) else todo
        ).append(item)
    written, problems = 0, []
    made: set[str] = set()
    for fetched in source.fetch(todo):
        item = fetched.item
        if fetched.data is None:
            problems.append((item, fetched.problem or "unreadable"))
            continue
        if item.wnid not in made:
            (folder / item.wnid).mkdir(parents=True, exist_ok=True)
            made.add(item.wnid)
        write_atomic(folder / item.wnid / f"{item.name}{suffix}", fetched.data)
        done.append(item)
        written += 1
    return done, written, problems


def extract_synset(
    images: Source, annotations: Source | None, out: Path, items: list[ListedImage]
) -> SynsetResult:
    """Extract one synset's listed images (and their XML) under `out`."""
    result = SynsetResult(images=len(items))
    done, result.written, problems = copy_members(images, items, out / "images", IMAGE_SUFFIX)
    result.present = len(done) - result.written
    result.skipped = [(f"{i.wnid}/{i.name}{IMAGE_SUFFIX}", reason) for i, reason in problems]
    if annotations is not None and done:
        xml_done, _, xml_problems = copy_members(annotations, done, out / "annotations", XML_SUFFIX)
        result.xml_written = len(xml_done)
        result.xml_missing = [(f"{i.wnid}/{i.name}{XML_SUFFIX}", reason) for i, reason in xml_problems]
    return result


# Worker processes get the (picklable) sources once, then synset tasks.
_WORKER: dict = {}


def _init_worker(images: Source, annotations: Source | None, out: Path) -> None:
    _WORKER.update(images=images, annotations=annotations, out=out)


def _run_task(items: list[ListedImage]) -> SynsetResult:
    return extract_synset(_WORKER["images"], _WORKER["annotations"], _WORKER["out"], items)


def run_tasks(
    images: Source,
    annotations: Source | None,
    out: Path,
    items: list[ListedImage],
    workers: int,
) -> SynsetResult:
    """Extract `items`, synset by synset, in this process or `workers` spawned processes."""
    from hpcvision.progress import progress

    total = SynsetResult()
    tasks = synset_groups(items)
    with progress(len(items), "extract", unit="img") as bar:
        if workers <= 1 or len(tasks) <= 1:
            results = (extract_synset(images, annotations, out, task) for task in tasks)
            for result in results:
                merge(total, result)
                bar.update(result.images)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(tasks)), _init_worker, (images, annotations, out)) as pool:
                for result in pool.imap_unordered(_run_task, tasks):
                    merge(total, result)
                    bar.update(result.images)
    return total


def merge(total: SynsetResult, part: SynsetResult) -> None:
    """Add one task's result into the running total."""
    total.images += part.images
    total.written += part.written
    total.present += part.present
    total.skipped += part.skipped
    total.xml_written += part.xml_written
    total.xml_missing += part.xml_missing


# ---------------------------------------------------------------------------------------------------
# The command


def add_extract_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `extract` (options and handler) to the `hpcvision data` subcommands."""
    parser = subparsers.add_parser(
        "extract",
        help="copy the listed images (and their XML) out of Images.tar / Annotation.tar.gz",
        description="Extract exactly the images of --list to OUT/images/<wnid>/<name>.JPEG and their "
        "XML to OUT/annotations/<wnid>/<name>.xml, reading nested tars in place (no synset tar is "
        "unpacked to disk). Reruns skip files already extracted. Images not written are listed in "
        "OUT/extract-report-rank<i>.tsv.",
    )
    parser.add_argument(
        "--images",
        required=True,
        type=Path,
        metavar="ARCHIVE",
        help="Images.tar or ILSVRC2012_img_train.tar (tar of <wnid>.tar), "
        "ILSVRC2012_img_val.tar (flat; needs --val-labels), or a folder <wnid>/<name>.JPEG",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        metavar="ARCHIVE",
        help="Annotation.tar.gz (tar of <wnid>.tar.gz) or a folder <wnid>/<name>.xml",
    )
    parser.add_argument(
        "--list",
        required=True,
        type=Path,
        dest="list_file",
        metavar="FILE",
        help="images to extract, one '<wnid> <name>' a line (the course's list format)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--synsets",
        type=Path,
        metavar="FILE",
        help="synsets.txt: list lines of other synsets are skipped as unknown",
    )
    parser.add_argument(
        "--val-labels",
        type=Path,
        metavar="FILE",
        help="labels of a flat validation tar: '<filename> <wnid>' a line, or one wnid a line in image order",
    )
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="local processes (default: 1)")
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        metavar="I",
        help="this process's rank (default: from mpirun/srun/PBS environment, else 0)",
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=None,
        metavar="N",
        help="number of ranks sharing the list (default: from the environment, else 1)",
    )
    parser.add_argument(
        "--index-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"where the archive index is cached (default: OUT/{INDEX_FOLDER})",
    )
    parser.set_defaults(func=run_extract)
    return parser


def resolve_rank(rank: int | None, ranks: int | None) -> tuple[int, int]:
    """Explicit --rank/--ranks win over the launcher's environment; UserError if they do not fit."""
    from hpcvision.cluster.discovery import process_rank

    env_rank, env_ranks = process_rank()
    rank = env_rank if rank is None else rank
    ranks = env_ranks if ranks is None else ranks
    if ranks < 1:
        raise UserError(f"--ranks must be at least 1, got {ranks}")
    if not 0 <= rank < ranks:
        raise UserError(f"--rank {rank} --ranks {ranks}: --rank must be in 0..{ranks - 1}")
    return rank, ranks


def write_report(path: Path, rows: list[tuple[str, str]]) -> None:
    """A (file, reason) TSV with a header line, written atomically."""
    lines = ["file\treason"] + [f"{name}\t{reason}" for name, reason in rows]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def run_extract(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data extract`."""
    start = time.monotonic()
    rank, ranks = resolve_rank(args.rank, args.ranks)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a folder")
    synsets = read_synsets(args.synsets) if args.synsets else None
    files = read_file_list(args.list_file, synsets)
    index_dir = args.index_dir or out / INDEX_FOLDER
    images = open_images(args.images, val_labels=args.val_labels, index_dir=index_dir)
    annotations = open_annotations(args.annotations, index_dir=index_dir) if args.annotations else None

    mine = rank_slice(files.images, rank, ranks)
    list_skips = files.skipped if rank == 0 else []  # list-level problems are reported once, by rank 0
    (out / "images").mkdir(parents=True, exist_ok=True)
    if annotations is not None:
        (out / "annotations").mkdir(parents=True, exist_ok=True)
    log.info(
        "rank %d/%d: %d of %d listed images, %d worker(s), from %s",
        rank,
        ranks,
        len(mine),
        files.listed,
        args.workers,
        args.images,
    )
    try:
        result = run_tasks(images, annotations, out, mine, args.workers)
    except OSError as exc:  # disk full, quota, permissions: nothing to skip, the run cannot go on
        raise UserError(f"{out}: cannot write: {exc}") from None

    skipped = list_skips + result.skipped
    report = out / f"extract-report-rank{rank}.tsv"
    write_report(report, skipped)
    listed = len(mine) + len(list_skips)
    written = result.written + result.present
    assert listed == written + len(skipped), (listed, written, len(skipped))
    scope = f"rank {rank} of {ranks}: " if ranks > 1 else ""
    print(
        f"{scope}listed {listed} = written {written} + skipped {len(skipped)}"
        f"  ({result.present} already present; {time.monotonic() - start:.1f} s)"
    )
    print(f"images: {out / 'images'}/<wnid>/<name>.JPEG")
    if annotations is not None:
        xml_report = out / f"extract-annotations-missing-rank{rank}.tsv"
        write_report(xml_report, result.xml_missing)
        print(
            f"annotations: {out / 'annotations'}/<wnid>/<name>.xml ({result.xml_written} present, "
            f"{len(result.xml_missing)} images without XML: {xml_report})"
        )
    print(f"report of images not written: {report}")
    if skipped:
        log.warning("%d listed image(s) not written; reasons in %s", len(skipped), report)
    return 0
