"""Subcommands of the tutorials stage (registered by hpcvision.cli): `hpcvision tutorial NAME|--list`.

Descriptions come from each script's docstring, read with `ast`, so `--list` never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
from pathlib import Path

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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the top-level parser."""
    parser = subparsers.add_parser(
        "tutorial",
        help="run one of the course's lessons (--list shows them)",
        description="Run one of the course's lessons as a script: it prints its numbers and writes "
        "PNG figures and results.json under --out. Options after NAME go to that tutorial "
        "(see `hpcvision tutorial NAME --help`).",
    )
    parser.add_argument("--list", action="store_true", help="list the tutorials with one line each")
    parser.add_argument("name", nargs="?", metavar="NAME", help="tutorial to run: " + ", ".join(TUTORIALS))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="--out DIR and the tutorial's own options")
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
    if args.list or not args.name:
        width = max(map(len, TUTORIALS))
        for name in TUTORIALS:
            print(f"{name:<{width}}  {describe(name)}")
        return 0
    if args.name not in TUTORIALS:
        raise UserError(f"tutorial '{args.name}': unknown (choose from {', '.join(TUTORIALS)})")
    module = importlib.import_module(f"hpcvision.tutorials.{TUTORIALS[args.name]}")
    from hpcvision.tutorials._common import run_script

    return run_script(module.main, module.build_parser(), list(args.options))
