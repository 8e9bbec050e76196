"""A sweep: a grid of train options (`--grid KEY=V1,V2`), one array task and one run folder per point.

`expand_grid` turns the `--grid` options into points (the product, first key slowest); `case_lines` is
the bash that picks the point of this array task. A point's run folder is named by its values
(`learning-rate=0.1,batch-size=64`) inside train's `--checkpoint-dir`, so a point that ran before
resumes from its checkpoints as a single run does, and `hpcvision runs` compares the folders.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from hpcvision.errors import UserError

# The array index each scheduler gives a task of an array job (PBS Pro -J, Torque -t, Slurm --array).
ARRAY_INDEX_VARS = {"slurm": "SLURM_ARRAY_TASK_ID", "pro": "PBS_ARRAY_INDEX", "torque": "PBS_ARRAYID"}
# A value names a folder and sits in a #!/bin/bash array: no separators, spaces or shell characters.
GRID_VALUE_RE = re.compile(r"[A-Za-z0-9_.+-]+")
GRID_KEY_RE = re.compile(r"-{0,2}([a-z][a-z0-9_-]*)")
# Options a point may not set: its run folder is made from train's --checkpoint-dir and its values.
NOT_SWEPT = ("checkpoint-dir", "config")


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: (option, value) pairs in --grid order."""

    values: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """The run folder's name: `learning-rate=0.1,batch-size=64`."""
        return ",".join(f"{key}={value}" for key, value in self.values)

    def args(self) -> list[str]:
        """The train options of this point."""
        return [word for key, value in self.values for word in (f"--{key}", value)]


def expand_grid(grid: tuple[str, ...] | list[str]) -> list[SweepPoint]:
    """`("learning-rate=0.1,0.2", "batch-size=32,64")` -> the 4 points of the product, first key slowest."""
    axes: list[tuple[str, list[str]]] = []
    for item in grid:
        key, sep, values_text = item.partition("=")
        match = GRID_KEY_RE.fullmatch(key.strip())
        values = [v.strip() for v in values_text.split(",")]
        if not sep or match is None or not all(values):
            raise UserError(f"--grid {item!r}: use KEY=V1,V2 with a train option as KEY (learning-rate=0.1,0.2)")
        name = match.group(1).replace("_", "-")
        if name in NOT_SWEPT:
            raise UserError(f"--grid {item!r}: each point's --checkpoint-dir is made from train's --checkpoint-dir "
                            "and the point's values")
        if any(name == other for other, _ in axes):
            raise UserError(f"--grid {item!r}: {name} is given twice")
        if len(set(values)) != len(values):
            raise UserError(f"--grid {item!r}: a value is given twice")
        bad = [v for v in values if not GRID_VALUE_RE.fullmatch(v)]
        if bad:
            raise UserError(f"--grid {item!r}: value {bad[0]!r} cannot name a run folder (use A-Z a-z 0-9 _ . + -)")
        axes.append((name, values))
    points = [SweepPoint(())]
    for name, values in axes:
        points = [SweepPoint(point.values + ((name, value),)) for point in points for value in values]
    return points if axes else []


def _quote(word: str) -> str:
    """shlex.quote, and quotes around a comma too (shellcheck reads `(a,b)` as a mistaken array separator)."""
    quoted = shlex.quote(word)
    return f"'{word}'" if quoted == word and "," in word else quoted


def case_lines(points: list[SweepPoint] | tuple[SweepPoint, ...], index_var: str, root: str) -> list[str]:
    """Bash that sets the array `point` to this array task's options: its values and its own run folder."""
    root = root.rstrip("/") or "/"
    shown = "".join(ch if ch.isprintable() else "?" for ch in root)
    lines = [f"# Sweep: array task ${index_var} trains one point of the grid in its own folder under {shown};",
             "# a point that ran before resumes from its checkpoints, as a single run does.",
             f'case "${{{index_var}:-}}" in']
    for i, point in enumerate(points):
        folder = f"{root}/{point.name}" if root != "/" else f"/{point.name}"
        words = [_quote(word) for word in [*point.args(), "--checkpoint-dir", folder]]
        lines.append(f"    {i}) point=({' '.join(words)}) ;;")
    lines += [f'    *) echo "hpcvision sweep: no point for {index_var}=${{{index_var}:-}} '
              f'(0..{len(points) - 1})" >&2; exit 2 ;;',
              "esac", ""]
    return lines
