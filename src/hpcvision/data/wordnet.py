"""WordNet 3.0's noun synsets (`data.noun`, Debian's wordnet-base) as ImageNet's human words.

An ImageNet wnid is `n` + the 8-digit offset of a WordNet 3.0 noun synset, and ImageNet's words for it
are that synset's lemmas, `_` read as a space, joined by `, ` ("tench, Tinca tinca"). A data.noun line
is `offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] ...` with `w_cnt` in hexadecimal;
lines starting with two spaces are the license header.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

# Where Debian's wordnet-base installs WordNet 3.0 (installed by scripts/install-system-deps.sh).
DEFAULT_DATA_NOUN = Path("/usr/share/wordnet/data.noun")


def parse_line(line: str) -> tuple[str, str] | None:
    """(wnid, words) of one data.noun line; None for the header and lines that are not a synset."""
    if line.startswith("  "):
        return None
    fields = line.split(" ", 4 + 2 * 256)
    try:
        offset, count = fields[0], int(fields[3], 16)
    except (IndexError, ValueError):
        return None
    lemmas = fields[4: 4 + 2 * count: 2]
    if not (len(offset) == 8 and offset.isdigit() and len(lemmas) == count and count):
        return None
    return f"n{offset}", ", ".join(lemma.replace("_", " ") for lemma in lemmas)


def read_words(path: str | Path = DEFAULT_DATA_NOUN, wanted: Collection[str] | None = None) -> dict[str, str]:
    """{wnid: words} of the synsets in `path` (only those in `wanted`, if given); OSError if unreadable."""
    want = set(wanted) if wanted is not None else None
    words: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            # The offset is the line's first 8 characters: skip the rest of unwanted lines unparsed.
            if want is not None and f"n{line[:8]}" not in want:
                continue
            parsed = parse_line(line)
            if parsed is not None:
                words[parsed[0]] = parsed[1]
    return words
