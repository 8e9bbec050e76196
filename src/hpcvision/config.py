"""Typed configuration: dataclass defaults, overridden by a YAML file, overridden by CLI flags.

Each stage defines a dataclass; `add_config_arguments` turns its fields into `--flags` and
`load_config` merges the three layers. Field metadata may carry `help` and `choices`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hpcvision.errors import UserError

T = TypeVar("T")


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """The scalar type argparse converts with, and whether the field is a list."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if origin in (list, tuple):
        return (args[0] if args else str), True
    return annotation, False


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--field-name` option per dataclass field; options not given stay unset.

    Field metadata may also set `flag` (another option name), `metavar` and `positional`; a field
    without a default is a required option.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        scalar, is_list = _flag_type(hints[field.name])
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(field, required)}
        kwargs.update({key: field.metadata[key] for key in ("metavar", "choices") if key in field.metadata})
        if field.metadata.get("positional"):
            parser.add_argument(field.name, type=scalar, nargs="+" if is_list else None, **kwargs)
            continue
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        kwargs.update(dest=field.name, required=required)
        if scalar is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        parser.add_argument(flag, type=scalar, nargs="+" if is_list else None, **kwargs)


def _help(field: dataclasses.Field, required: bool) -> str:
    """The field's help, with its default unless it is required or the help already names one."""
    help_text = field.metadata.get("help", "")
    if required or "(default:" in help_text:
        return help_text
    default = field.default if field.default is not dataclasses.MISSING else None
    return f"{help_text} (default: {default})" if help_text else f"default: {default}"


def _check_type(cls: type, name: str, value: Any, source: str) -> Any:
    scalar, is_list = _flag_type(typing.get_type_hints(cls)[name])
    if value is None:
        return value
    items = value if is_list else [value]
    if is_list and not isinstance(value, list):
        raise UserError(f"{source}: '{name}' must be a list, got {value!r}")
    for item in items:
        ok = isinstance(item, scalar) or (scalar is float and isinstance(item, int) and not isinstance(item, bool))
        if scalar is int and isinstance(item, bool):
            ok = False
        if not ok:
            raise UserError(f"{source}: '{name}' must be {scalar.__name__}, got {item!r}")
    return [scalar(i) for i in items] if is_list else scalar(value)


def load_config(cls: type[T], args: argparse.Namespace | None = None, yaml_path: str | Path | None = None) -> T:
    """Build `cls` from its defaults, then the YAML file, then the flags set in `args`."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if yaml_path:
        path = Path(yaml_path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{path}: cannot read config: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: config must be a mapping of option: value")
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise UserError(f"{path}: unknown option '{key}' (known: {', '.join(sorted(names))})")
            values[name] = _check_type(cls, name, value, str(path))
    if args is not None:
        values.update({name: getattr(args, name) for name in names if hasattr(args, name)})
    for field in dataclasses.fields(cls):
        choices = field.metadata.get("choices")
        if choices and values.get(field.name) is not None and values[field.name] not in choices:
            raise UserError(f"option '{field.name}' must be one of {', '.join(map(str, choices))}")
    return cls(**values)


def save_config(config: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML, so a run records exactly what it ran with."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
