"""The `hpcvision` command: argument parsing only. Each stage registers its own subcommands.

Stage modules keep TensorFlow imports inside their handlers, so `--help` and job-script
generation start in well under a second.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hpcvision import __version__
from hpcvision.cluster import commands as cluster_commands
from hpcvision.data import commands as data_commands
from hpcvision.errors import UserError, storage_problem
from hpcvision.infer import commands as infer_commands
from hpcvision.startup import quiet_start
from hpcvision.train import commands as train_commands
from hpcvision.tutorials import commands as tutorial_commands

STAGES = (data_commands, train_commands, infer_commands, cluster_commands, tutorial_commands)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: one subcommand per workflow step."""
    parser = argparse.ArgumentParser(
        prog="hpcvision",
        description="Extract ImageNet-style archives, build TFRecords, train, evaluate and export "
        "image classifiers on a laptop, a GPU box or a PBS/Slurm cluster.",
    )
    parser.add_argument("--version", action="version", version=f"hpcvision {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and TensorFlow's start-up notices and INFO lines")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for stage in STAGES:
        stage.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    quiet_start(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"hpcvision: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None:
            raise
        print(f"hpcvision: error: {problem}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("hpcvision: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
