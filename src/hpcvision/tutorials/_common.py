"""What every tutorial script shares: its command line, the output folder and results.json.

Kept tiny on purpose: each lesson still reads top to bottom; only the plumbing lives here.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def output_dir(out_dir: str | os.PathLike | None, name: str) -> Path:
    """The folder a tutorial writes into (created); default ./tutorial-NAME."""
    path = Path(out_dir) if out_dir is not None else Path(f"tutorial-{name}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (works on cluster nodes without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG, close it and say where it went."""
    fig.savefig(path, dpi=100, bbox_inches="tight")
    fig.clf()
    pyplot().close(fig)
    print(f"wrote {path}")
    return path


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    """Write the tutorial's key numbers to OUT/results.json."""
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True, default=_to_json) + "\n")
    print(f"wrote {path}")
    return path


def _to_json(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parser_for(doc: str | None, prog: str) -> argparse.ArgumentParser:
    """The argument parser of one tutorial: its docstring as help, plus --out DIR."""
    title = (doc or "").strip().splitlines()[0] if doc else prog
    parser = argparse.ArgumentParser(
        prog=f"hpcvision tutorial {prog}", description=title, epilog="Outputs: PNG figure(s) and results.json under --out."
    )
    parser.add_argument("--out", default=None, help="output folder (default ./tutorial-NAME)")
    return parser


def run_script(
    main: Callable[..., dict],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> int:
    """Parse `argv` with the tutorial's parser and call main(out_dir=..., **options).

    Hides TensorFlow's C++ start-up chatter (unless TF_CPP_MIN_LOG_LEVEL is set): the lessons import
    TensorFlow inside main, after this, and their output is meant to be read.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options = vars(parser.parse_args(argv))
    main(out_dir=options.pop("out"), **options)
    return 0
