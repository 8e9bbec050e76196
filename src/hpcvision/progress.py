"""Progress bars for long work: rate and ETA on a terminal, periodic lines in batch-job logs."""

import os
import sys

from tqdm import tqdm


def progress(total: int | None, desc: str, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr; in a non-interactive job log it refreshes every 30 s instead of 0.5 s."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 30.0,
        disable=os.environ.get("HPCVISION_PROGRESS", "1") == "0",
    )
