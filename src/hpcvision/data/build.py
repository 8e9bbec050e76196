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

import hashlib
import json
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hpcvision.data import records
from hpcvision.data.annotations import VocBoxes, normalise, read_voc
from hpcvision.data.extract import resolve_rank
from hpcvision.data.images import ImageProblem, prepare_image
from hpcvision.data.lists import IMAGE_SUFFIX, ListedImage, read_file_list, read_metadata, read_synsets
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
from hpcvision.data.sources import NO_ANNOTATION
from hpcvision.errors import UserError
from hpcvision.files import atomic_path, remove_temporaries
from hpcvision.progress import progress

log = logging.getLogger(__name__)

PROGRESS_EVERY = 32  # images between progress messages from a worker process


@dataclass(frozen=True)
class BuildConfig:
    """Everything `data build` needs; paths as given on the command line."""

    images: Path
    file_list: Path
    synsets: Path
    out: Path
    annotations: Path | None = None
    val_labels: Path | None = None
    metadata: Path | None = None
    name: str = "train"
    shards: int = 8
    label_offset: int = 1
    seed: int = 12345
    workers: int = 1
    rank: int | None = None
    ranks: int | None = None
    index_dir: Path | None = None
    wait: float = 600.0


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: where, which images in which order, and the fingerprint of that plan."""

    index: int
    path: str
    items: tuple[ListedImage, ...]
    fingerprint: str
    voc: tuple[VocBoxes | None, ...] = ()  # each item's annotation, read before writing (None: none)


@dataclass(frozen=True)
class SourceSpec:
    """How a writer process opens the archives and labels its records (picklable)."""

    images: str
    annotations: str | None
    val_labels: str | None
    index_dir: str
    labels: dict[str, tuple[int, str]]  # wnid -> (stored label, text)


@dataclass
class Plan:
    """The whole build: every shard (all ranks) and the list-level skips."""

    config: BuildConfig
    shards: list[ShardTask]
    labels: dict[str, tuple[int, str]]
    wnids: list[str]
    listed: int
    list_skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return _digest([s.fingerprint for s in self.shards] + [list(r) for r in self.list_skipped])


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _check_config(config: BuildConfig) -> tuple[int, int]:
    """(rank, ranks) after validating the arguments; UserError naming the bad one."""
    if config.shards < 1:
        raise UserError(f"--shards {config.shards}: must be at least 1")
    if config.workers < 1:
        raise UserError(f"--workers {config.workers}: must be at least 1")
    if not config.name or "/" in config.name or config.name.startswith("."):
        raise UserError(f"--name {config.name!r}: must be a plain file name prefix")
    return resolve_rank(config.rank, config.ranks)


def _stamp(path: Path | None) -> list[int] | None:
    """Size and mtime of an archive file, so shards built from a replaced archive count as stale."""
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return [stat.st_size, int(stat.st_mtime)]


def make_plan(config: BuildConfig) -> Plan:
    """Read the synsets, metadata and list; shuffle and cut into shards (the same for every rank)."""
    wnids = read_synsets(config.synsets)
    words = read_metadata(config.metadata) if config.metadata else {}
    missing_words = [w for w in wnids if w not in words]
    if config.metadata and missing_words:
        log.warning("%s: no words for %d synsets (e.g. %s): their image/class/text is the wnid",
                    config.metadata, len(missing_words), missing_words[0])
    labels = {wnid: (i + config.label_offset, words.get(wnid, wnid)) for i, wnid in enumerate(wnids)}
    file_list = read_file_list(config.file_list, synsets=wnids)
    items = file_list.images
    order = np.random.default_rng(config.seed).permutation(len(items))
    shuffled = [items[i] for i in order]
    bounds = np.linspace(0, len(shuffled), config.shards + 1).astype(int)
    stamps = [_stamp(config.images), _stamp(config.annotations)]
    shards = []
    for s in range(config.shards):
        chunk = tuple(shuffled[bounds[s]:bounds[s + 1]])
        fingerprint = _digest({
            "format": FORMAT_VERSION, "shard": s, "shards": config.shards, "name": config.name,
            "items": [[i.wnid, i.name] for i in chunk], "annotations": config.annotations is not None,
            "archives": stamps,
            "labels": {w: list(labels[w]) for w in sorted({i.wnid for i in chunk})},
        })
        shards.append(ShardTask(s, str(shard_path(config.out, config.name, s, config.shards)), chunk, fingerprint))
    return Plan(config, shards, labels, wnids, file_list.listed, list(file_list.skipped))


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

_SOURCES: dict[tuple, tuple] = {}


def open_sources(spec: SourceSpec) -> tuple:
    """(image source, annotation source or None), opened once per process."""
    key = (spec.images, spec.annotations, spec.val_labels, spec.index_dir)
    if key not in _SOURCES:
        from hpcvision.data.sources import open_annotations, open_images

        images = open_images(spec.images, val_labels=spec.val_labels, index_dir=spec.index_dir)
        annotations = open_annotations(spec.annotations, index_dir=spec.index_dir) if spec.annotations else None
        _SOURCES.clear()
        _SOURCES[key] = (images, annotations)
    return _SOURCES[key]


def _file_of(item: ListedImage) -> str:
    return f"{item.wnid}/{item.name}{IMAGE_SUFFIX}"


class ShardWriter:
    """Turns fetched images into one shard's records, collecting what was skipped or fixed."""

    def __init__(self, spec: SourceSpec, task: ShardTask):
        self.spec, self.task = spec, task
        self.skipped: list[list[str]] = []
        self.warnings: list[list[str]] = []
        self.stats: Counter = Counter()

    def _boxes(self, item: ListedImage, voc: VocBoxes | None, width: int, height: int) -> list[records.Box]:
        if voc is None:
            return []
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
        boxes = self._boxes(item, voc, image.width, image.height)
        self.stats["boxes"] += len(boxes)
        self.stats["images_with_boxes"] += bool(boxes)
        label, text = self.spec.labels[item.wnid]
        return records.encode_example(encoded=image.jpeg, filename=f"{item.name}{IMAGE_SUFFIX}", height=image.height,
                                      width=image.width, label=label, synset=item.wnid, text=text, boxes=boxes)

    def write(self, report: Callable[[int], None]) -> dict:
        """Write the shard atomically, then its sidecar; returns the sidecar."""
        images, _annotations = open_sources(self.spec)
        items = self.task.items
        voc = self.task.voc or (None,) * len(items)
        position = {item: i for i, item in enumerate(items)}
        pending: dict[int, object] = {}
        next_index, count, unreported = 0, 0, 0
        # Leftovers of an interrupted run: this writer owns the shard, so its temporaries are its own.
        remove_temporaries(Path(self.task.path).parent, Path(self.task.path).name)
        with atomic_path(self.task.path) as tmp, records.RecordWriter(str(tmp)) as writer:
            # fetch yields in archive order; records go out in the shuffled order of the plan
            for fetched in images.fetch(items) if items else ():
                pending[position[fetched.item]] = fetched
                while next_index in pending:
                    current = pending.pop(next_index)
                    record = self.record(current, voc[next_index])
                    if record is not None:
                        writer.write(record)
                        count += 1
                    next_index += 1
                    unreported += 1
                    if unreported >= PROGRESS_EVERY:
                        report(unreported)
                        unreported = 0
            if next_index != len(items):
                raise RuntimeError(f"{self.task.path}: image source returned {next_index} of {len(items)} images")
        report(unreported)
        sidecar = {"file": Path(self.task.path).name, "count": count, "bytes": os.path.getsize(self.task.path),
                   "fingerprint": self.task.fingerprint, "skipped": self.skipped, "warnings": self.warnings,
                   "stats": dict(self.stats)}
        write_json(sidecar_path(self.task.path), sidecar)
        return sidecar


def read_voc_group(spec: SourceSpec, items: list[ListedImage]) -> dict[ListedImage, VocBoxes]:
    """Each item's annotation (items without one are left out); runs in a worker or here."""
    _images, annotations = open_sources(spec)
    found: dict[ListedImage, VocBoxes] = {}
    for fetched in annotations.fetch(items):
        if fetched.data is not None:
            found[fetched.item] = read_voc(fetched.data)
        elif fetched.problem and fetched.problem != NO_ANNOTATION:
            found[fetched.item] = VocBoxes(problem=f"unusable: {fetched.problem}")
    return found


def annotation_groups(tasks: list[ShardTask], groups: int) -> list[list[ListedImage]]:
    """The tasks' items split by synset into `groups` lists, so each synset archive is read once."""
    by_wnid: dict[str, list[ListedImage]] = {}
    for task in tasks:
        for item in task.items:
            by_wnid.setdefault(item.wnid, []).append(item)
    split: list[list[ListedImage]] = [[] for _ in range(groups)]
    for i, wnid in enumerate(sorted(by_wnid)):
        split[i % groups].extend(by_wnid[wnid])
    return [g for g in split if g]


def attach_annotations(tasks: list[ShardTask], found: dict[ListedImage, VocBoxes]) -> list[ShardTask]:
    return [replace(task, voc=tuple(found.get(item) for item in task.items)) for task in tasks]


_PROGRESS_QUEUE = None


def _init_worker(progress_queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = progress_queue
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _write_in_worker(spec: SourceSpec, task: ShardTask) -> dict:
    return ShardWriter(spec, task).write(lambda n: _PROGRESS_QUEUE.put(n) if n else None)


def pool_start_method() -> str:
    """"fork" when this process is single-threaded and has no TensorFlow loaded, else "spawn".

    Forked writers start in milliseconds with everything imported; a spawned one takes ~0.5-1 s,
    as long as a few thousand records take to write. Forking a multi-threaded process (TensorFlow's
    thread pools, e.g. in a test run) can deadlock the child, so then spawn is used.
    """
    # tqdm's monitor thread only sleeps and never runs in the children, which report through a queue
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.name != "tqdm_monitor"]
    if sys.platform == "linux" and not others and "tensorflow" not in sys.modules:
        return "fork"
    return "spawn"


def write_shards(spec: SourceSpec, tasks: list[ShardTask], workers: int, desc: str) -> None:
    """Read the annotations once (per synset), then write `tasks` with `workers` processes (1: here).

    Reading XML per shard instead would re-read every synset's annotation archive once per shard.
    """
    if not tasks:
        return
    workers = min(workers, len(tasks))
    with_xml = spec.annotations is not None
    if with_xml:
        log.info("reading the annotations of %d images from %s", sum(len(t.items) for t in tasks), spec.annotations)
    if workers == 1:
        if with_xml:
            found = {}
            for group in annotation_groups(tasks, 1):
                found.update(read_voc_group(spec, group))
            tasks = attach_annotations(tasks, found)
        with progress(sum(len(t.items) for t in tasks), desc, unit="img") as bar:
            for task in tasks:
                ShardWriter(spec, task).write(bar.update)
        return
    ctx = multiprocessing.get_context(pool_start_method())
    progress_queue = ctx.Queue()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(progress_queue,)) as pool:
        if with_xml:
            found = {}
            for part in pool.starmap(read_voc_group, [(spec, g) for g in annotation_groups(tasks, workers)]):
                found.update(part)
            tasks = attach_annotations(tasks, found)
        with progress(sum(len(t.items) for t in tasks), desc, unit="img") as bar:
            results = [pool.apply_async(_write_in_worker, (spec, task)) for task in tasks]
            while not all(r.ready() for r in results):
                _drain(progress_queue, bar, timeout=0.2)
            _drain(progress_queue, bar, timeout=0)
            for r in results:
                r.get()  # re-raises a worker's error (a UserError keeps its one-line message)


def _drain(progress_queue, bar, timeout: float) -> None:
    try:
        bar.update(progress_queue.get(timeout=timeout) if timeout else progress_queue.get_nowait())
        while True:
            bar.update(progress_queue.get_nowait())
    except queue.Empty:
        pass


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


def write_manifest(plan: Plan, sidecars: list[dict]) -> dict:
    """Merge the sidecars into the manifest, skipped.tsv and warnings.tsv (atomic replaces)."""
    config = plan.config
    skipped = [list(r) for r in plan.list_skipped] + [r for s in sidecars for r in s["skipped"]]
    warnings = [r for s in sidecars for r in s["warnings"]]
    stats: Counter = Counter()
    for s in sidecars:
        stats.update(s["stats"])
    written = sum(s["count"] for s in sidecars)
    skipped_file, warnings_file = report_paths(config.name)
    if written + len(skipped) != plan.listed:
        raise RuntimeError(f"counts do not reconcile: listed {plan.listed} != written {written} + skipped {len(skipped)}")
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
                   "list": str(config.file_list), "synsets": str(config.synsets),
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
    if manifest["skipped"]:
        reasons = Counter(_reason_kind(r) for r in _read_reasons(out / manifest["skipped_file"]))
        top = ", ".join(f"{n} {k}" for k, n in reasons.most_common(4))
        log.warning("%d listed images skipped (%s): see %s", manifest["skipped"], top, out / manifest["skipped_file"])
    if manifest["warnings"]:
        log.warning("%d warnings (conversions, annotation problems): see %s", manifest["warnings"],
                    out / manifest["warnings_file"])


def _read_reasons(path: Path) -> list[str]:
    return [line.split("\t", 1)[1] for line in path.read_text().splitlines()[1:] if "\t" in line]


def _reason_kind(reason: str) -> str:
    return reason.split(" (", 1)[0].split(":", 1)[0]


# --- the command ---------------------------------------------------------------------------------

def build(config: BuildConfig) -> int:
    """Run `data build` for this rank; the exit code (0 when this rank's shards are complete)."""
    rank, ranks = _check_config(config)
    plan = make_plan(config)
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{config.out}: cannot create output folder: {exc.strerror or exc}") from None
    index_dir = config.index_dir or config.out / ".hpcvision-index"
    spec = SourceSpec(str(config.images), str(config.annotations) if config.annotations else None,
                      str(config.val_labels) if config.val_labels else None, str(index_dir), plan.labels)
    open_sources(spec)  # fails early with one line if an archive is unreadable; builds the index once
    _drop_stale_manifest(plan)
    mine = [t for t in plan.shards if t.index % ranks == rank]
    todo = [t for t in mine if read_sidecar(t) is None]
    if len(todo) < len(mine):
        print(f"{len(mine) - len(todo)} of this rank's {len(mine)} shards already complete: not rewritten")
    start = time.monotonic()
    who = f" rank {rank}/{ranks}" if ranks > 1 else ""
    write_shards(spec, todo, config.workers, f"build {config.name}{who}")
    images = sum(len(t.items) for t in todo)
    if todo:
        elapsed = time.monotonic() - start
        log.info("rank %d wrote %d shards (%d images) in %.1f s, %.0f images/s", rank, len(todo), images,
                 elapsed, images / max(elapsed, 1e-9))
    sidecars = collect_sidecars(plan)
    if sidecars is None and rank == 0 and ranks > 1:
        sidecars = _wait_for_others(plan, config.wait)
    if sidecars is None:
        missing = [Path(t.path).name for t in plan.shards if read_sidecar(t) is None]
        if rank == 0 and ranks > 1:
            raise UserError(f"{config.out}: {len(missing)} shards still missing after waiting {config.wait:.0f} s "
                            f"(e.g. {missing[0]}): rerun the build to complete them")
        print(f"rank {rank}/{ranks}: {len(mine)} shards complete; {len(missing)} shards of other ranks pending, "
              f"the last rank to finish writes {manifest_path(config.out, config.name)}")
        return 0
    _summary(write_manifest(plan, sidecars), config.out)
    return 0


def _wait_for_others(plan: Plan, wait: float) -> list[dict] | None:
    deadline = time.monotonic() + wait
    log.info("rank 0: waiting up to %.0f s for the other ranks' shards", wait)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        sidecars = collect_sidecars(plan)
        if sidecars is not None:
            return sidecars
    return None
