"""A stage's own options (what follows `--` in `job pbs|slurm STAGE`), parsed when the script is written.

The stage's real parser (the one `hpcvision STAGE` uses) reads them and its config is built as the stage
builds it (types, bounds, choices, required options, a `--config` YAML file), so a typo costs seconds
instead of a queue wait. Nothing here imports TensorFlow: the configs are plain dataclasses.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from hpcvision.config import load_config
from hpcvision.errors import UserError


def _config_class(stage: str) -> type:
    """The dataclass of a stage's options."""
    if stage in ("extract", "build"):
        from hpcvision.data.config import BuildConfig, ExtractConfig

        return ExtractConfig if stage == "extract" else BuildConfig
    if stage == "evaluate":
        from hpcvision.infer.config import EvaluateConfig

        return EvaluateConfig
    from hpcvision.train.config import TrainConfig

    return TrainConfig


def _stage_parser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    """The parser of `hpcvision COMMAND...`, registered by its stage's commands module (not the whole CLI's)."""
    if command[0] == "data":
        from hpcvision.data import commands
    elif command[0] == "train":
        from hpcvision.train import commands
    else:
        from hpcvision.infer import commands
    parser = argparse.ArgumentParser(prog="hpcvision")
    commands.register(parser.add_subparsers(dest="command"))
    for word in command:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = actions[0].choices[word]
    return parser


def parse_stage_options(command: tuple[str, ...], stage: str, args: list[str]) -> Any:
    """The config `hpcvision COMMAND ARGS` would run with; a one-line UserError for anything it would refuse."""
    where = f"the {' '.join(command)} options after --"

    def refuse(message: str) -> NoReturn:
        raise UserError(f"{where}: {message}")

    parser = _stage_parser(command)
    parser.error = refuse  # type: ignore[method-assign]  # one line, not argparse's usage and exit
    namespace = parser.parse_args(args)
    try:
        return load_config(_config_class(stage), namespace, getattr(namespace, "config", None))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
