"""Subcommands of the tutorials stage (registered by hpcvision.cli): `hpcvision tutorial NAME|--list`.

Descriptions come from each script's docstring, read with `ast`, so `--list` never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from hpcvision.config import add_config_arguments, load_config, option
from hpcvision.errors import UserError

# Lesson order of the course: name on the command line -> module under hpcvision.tutorials.
TUTORIALS = {
    "basics": "basics",
    "regression": "regression",
    "neural-net": "neural_net",
    "convolution": "convolution",
    "cnn": "cnn",
    "distributed-regression": "distributed_regression",
}


@dataclass(frozen=True)
class TutorialConfig:
    """Everything `tutorial` needs; each lesson parses its own options (its `build_parser`)."""

    list_tutorials: bool = option(False, "list the tutorials with one line each", flag="--list")
    name: str | None = option(None, f"tutorial to run: {', '.join(TUTORIALS)} (default: list them)",
                              positional=True, nargs="?", metavar="NAME")
    options: tuple[str, ...] = option((), "--out DIR and the tutorial's own options (default: none)",
                                      positional=True, nargs=argparse.REMAINDER)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the top-level parser."""
    parser = subparsers.add_parser(
        "tutorial",
        help="run one of the course's lessons (--list shows them)",
        description="Run one of the course's lessons as a script: it prints its numbers and writes "
        "PNG figures and results.json under --out. Options after NAME go to that tutorial "
        "(see `hpcvision tutorial NAME --help`).",
    )
    add_config_arguments(parser, TutorialConfig)
    parser.set_defaults(func=run_tutorial)


def describe(name: str) -> str:
    """First line of the tutorial's docstring (read from source, without importing it)."""
    spec = importlib.util.find_spec(f"hpcvision.tutorials.{TUTORIALS[name]}")
    if spec is None or spec.origin is None:
        return "(missing)"
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text()))
    return doc.strip().splitlines()[0].rstrip(".") if doc else ""


def run_tutorial(args: argparse.Namespace) -> int:
    """Handler of `hpcvision tutorial`: list the lessons or run one."""
    config = load_config(TutorialConfig, args)
    if config.list_tutorials or not config.name:
        width = max(map(len, TUTORIALS))
        for name in TUTORIALS:
            print(f"{name:<{width}}  {describe(name)}")
        return 0
    if config.name not in TUTORIALS:
        raise UserError(f"tutorial '{config.name}': unknown (choose from {', '.join(TUTORIALS)})")
    module = importlib.import_module(f"hpcvision.tutorials.{TUTORIALS[config.name]}")
    from hpcvision.tutorials._common import run_script

    return run_script(module.main, module.build_parser(), list(config.options))
