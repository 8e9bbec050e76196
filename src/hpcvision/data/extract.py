"""`hpcvision data extract`: copy exactly the listed images (and their XML) out of ImageNet archives.

Writes `OUT/images/<wnid>/<name>.JPEG` and `OUT/annotations/<wnid>/<name>.xml`, both under the image's
synset even where the list reads the XML from another synset's folder (see lists.py). Work is split by
synset: across ranks (`--rank/--ranks`, disjoint slices that together cover the list) and, within a
rank, across `--workers` processes. Files land under their final name only when complete (a hidden
temporary, renamed), and a file already present with the member's size is kept, so a rerun resumes.
Every listed image not written goes to `OUT/extract-report-rank<i>.tsv` with the reason.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcvision.cluster.discovery import resolve_rank
from hpcvision.data.config import ExtractConfig, index_dir
from hpcvision.data.labelset import choose_synsets
from hpcvision.data.listing import listed_images
from hpcvision.data.lists import IMAGE_SUFFIX, ListedImage
from hpcvision.data.shards import write_tsv
from hpcvision.data.skips import check_skipped
from hpcvision.data.sources import XML_SUFFIX, Source, open_annotations, open_images
from hpcvision.data.workers import Report, Workers
from hpcvision.errors import CountMismatch, UserError
from hpcvision.files import remove_temporaries, write_atomic
from hpcvision.progress import progress

log = logging.getLogger(__name__)

REPORT_HEADER = "file\treason"


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


def already_present(path: Path, size: int | None) -> bool:
    """True when `path` is a regular file of the expected size (a previous run wrote it)."""
    if size is None:
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == size


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXTRACTED_IMAGE_SUFFIXES = (IMAGE_SUFFIX, ".png")


def image_suffix(data: bytes) -> str:
    """The suffix an extracted image is written under, from its bytes: `.png` for a PNG (an
    ImageFolder's `x.png`, or a PNG named `.JPEG`), else `.JPEG`; build reads either."""
    return ".png" if data.startswith(PNG_SIGNATURE) else IMAGE_SUFFIX


def copy_members(
    source: Source, items: list[ListedImage], folder: Path, suffixes: tuple[str, ...],
    suffix_of: Callable[[bytes], str],
) -> tuple[list[ListedImage], int, list[tuple[ListedImage, str]]]:
    """Copy `items` from `source` to `folder/<wnid>/<name><suffix_of(bytes)>`, one of `suffixes`;
    (done items, newly written, problems)."""
    for wnid in {item.wnid for item in items}:
        remove_temporaries(folder / wnid)  # only this process extracts this synset
    sizes = source.sizes(items)
    done: list[ListedImage] = []
    todo: list[ListedImage] = []
    for item in items:
        present = any(already_present(folder / item.wnid / f"{item.name}{suffix}", sizes.get(item))
                      for suffix in suffixes)
        (done if present else todo).append(item)
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
        write_atomic(folder / item.wnid / f"{item.name}{suffix_of(fetched.data)}", fetched.data)
        done.append(item)
        written += 1
    return done, written, problems


def extract_synset(
    images: Source, annotations: Source | None, out: Path, items: list[ListedImage]
) -> SynsetResult:
    """Extract one synset's listed images (and their XML) under `out`."""
    result = SynsetResult(images=len(items))
    done, result.written, problems = copy_members(images, items, out / "images", EXTRACTED_IMAGE_SUFFIXES,
                                                  image_suffix)
    result.present = len(done) - result.written
    result.skipped = [(f"{i.wnid}/{i.name}{IMAGE_SUFFIX}", reason) for i, reason in problems]
    if annotations is not None and done:
        xml_done, _, xml_problems = copy_members(annotations, done, out / "annotations", (XML_SUFFIX,),
                                                 lambda _: XML_SUFFIX)
        result.xml_written = len(xml_done)
        result.xml_missing = [(f"{i.xml_wnid}/{i.name}{XML_SUFFIX}", reason) for i, reason in xml_problems]
    return result


@dataclass(frozen=True)
class ExtractJob:
    """What every task of one run shares: the opened sources and the output folder (picklable)."""

    images: Source
    annotations: Source | None
    out: Path


def extract_share(job: ExtractJob, items: list[ListedImage], report: Report) -> dict[str, SynsetResult]:
    """Extract `items` synset by synset, largest first; each synset's result by wnid."""
    results = {}
    for group in synset_groups(items):
        results[group[0].wnid] = extract_synset(job.images, job.annotations, job.out, group)
        report(len(group))
    return results


def run_tasks(job: ExtractJob, items: list[ListedImage], workers: int) -> SynsetResult:
    """Extract `items` in this process or in `workers` processes, each given whole synsets.

    The per-synset results are merged in one fixed order, so the reports do not depend on `workers`.
    """
    groups = synset_groups(items)
    count = max(1, min(workers, len(groups)))
    with progress(len(items), "extract", unit="img") as bar:
        parts = Workers(count).map(extract_share, job, split_by_synset(items, count), bar.update)
    by_wnid = {wnid: result for part in parts for wnid, result in part.items()}
    total = SynsetResult()
    for group in groups:
        merge(total, by_wnid[group[0].wnid])
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


def _check_config(config: ExtractConfig) -> tuple[int, int]:
    """(rank, ranks) after validating what ExtractConfig's declared bounds do not; UserError naming the bad one."""
    rank, ranks = resolve_rank(config.rank, config.ranks)
    if config.out.exists() and not config.out.is_dir():
        raise UserError(f"{config.out}: --out exists and is not a folder")
    return rank, ranks


def open_job(config: ExtractConfig) -> ExtractJob:
    """Open the image (and annotation) sources; UserError with one line if one is unreadable."""
    folder = index_dir(config.index_dir, config.out)
    images = open_images(config.images, val_labels=config.val_labels, index_dir=folder,
                         val_label_ids=config.val_label_ids)
    annotations = open_annotations(config.annotations, index_dir=folder) if config.annotations else None
    return ExtractJob(images, annotations, config.out)


def extract(config: ExtractConfig) -> int:
    """Run `data extract` for this rank; 0 when every listed image is written or reported, and
    UserError (exit 2) when none was written or more than --max-skipped were not."""
    start = time.monotonic()
    rank, ranks = _check_config(config)
    synsets = choose_synsets(config.synsets, None, ()).wnids if config.synsets else None
    files = listed_images(config.list_file, config, synsets)  # no --list: every image of --images
    job = open_job(config)
    mine = rank_slice(files.images, rank, ranks)
    list_skips = files.skipped if rank == 0 else []  # list-level problems are reported once, by rank 0
    log.info("rank %d/%d: %d of %d listed images, %d worker(s), from %s",
             rank, ranks, len(mine), files.listed, config.workers, config.images)
    try:
        (job.out / "images").mkdir(parents=True, exist_ok=True)
        if job.annotations is not None:
            (job.out / "annotations").mkdir(parents=True, exist_ok=True)
        result = run_tasks(job, mine, config.workers)
        result.skipped[:0] = list_skips
        listed = len(mine) + len(list_skips)
        report = _report(job, result, listed, rank, ranks, start)
    except OSError as exc:  # disk full, quota, permissions: nothing to skip, the run cannot go on
        raise UserError(f"{exc.filename or job.out}: cannot write: {exc.strerror or exc}") from None
    if listed or ranks == 1:  # a rank whose share of the list is empty has nothing to write
        check_skipped(listed, result.written + result.present, result.skipped, report, config.max_skipped)
    return 0


def _report(job: ExtractJob, result: SynsetResult, listed: int, rank: int, ranks: int, start: float) -> Path:
    """Write this rank's reports and print the reconciled counts; the report of images not written.
    CountMismatch if the counts do not add up."""
    out, skipped = job.out, result.skipped
    report = out / f"extract-report-rank{rank}.tsv"
    write_tsv(report, REPORT_HEADER, [list(row) for row in skipped])
    written = result.written + result.present
    if listed != written + len(skipped):
        raise CountMismatch(f"{out}: listed {listed} != written {written} + skipped {len(skipped)}")
    scope = f"rank {rank} of {ranks}: " if ranks > 1 else ""
    print(f"{scope}listed {listed} = written {written} + skipped {len(skipped)}"
          f"  ({result.present} already present; {time.monotonic() - start:.1f} s)")
    print(f"images: {out / 'images'}/<wnid>/<name>.JPEG")
    if job.annotations is not None:
        xml_report = out / f"extract-annotations-missing-rank{rank}.tsv"
        write_tsv(xml_report, REPORT_HEADER, [list(row) for row in result.xml_missing])
        print(f"annotations: {out / 'annotations'}/<wnid>/<name>.xml ({result.xml_written} present, "
              f"{len(result.xml_missing)} images without XML: {xml_report})")
    print(f"report of images not written: {report}")
    return report
