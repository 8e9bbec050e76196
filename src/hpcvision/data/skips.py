"""When skipped images end a `build` or `extract` run: nothing written, or more than --max-skipped.

Both commands keep going past a bad image (a report row each), but a split that came out empty or thin
must not pass as a success: the run exits 2 with one line naming the top reasons and the report.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from hpcvision.errors import UserError

log = logging.getLogger(__name__)


def check_skipped(listed: int, written: int, rows: Sequence[Sequence[str]], report: Path,
                  max_skipped: float) -> None:
    """UserError (exit 2) naming the top reasons and `report` when nothing was written or more than
    `max_skipped` of the list was skipped; a warning when fewer were. The output stays either way."""
    skipped = listed - written
    if not skipped and written:
        return
    if not listed:
        raise UserError(f"nothing written: the list names no images: see {report}")
    reasons = Counter(_reason_kind(row[-1]) for row in rows)
    top = ", ".join(f"{n} {k}" for k, n in reasons.most_common(3))
    if not written:
        raise UserError(f"nothing written: all {listed} listed images skipped ({top}): see {report}")
    if skipped > max_skipped * listed:
        raise UserError(f"{skipped} of {listed} listed images skipped ({skipped / listed:.1%} > --max-skipped "
                        f"{max_skipped:.1%}; {top}): see {report}")
    log.warning("%d listed images skipped (%s): see %s", skipped, top, report)


def _reason_kind(reason: str) -> str:
    """A reason without its details (after ' (', ':' or a quote; the line and synsets it names), for counting."""
    kind = re.split(r" \(|:| '", reason, maxsplit=1)[0]
    return re.sub(r"\bn[0-9]{8}\b", "<wnid>", re.sub(r" of line [0-9]+$", "", kind))
