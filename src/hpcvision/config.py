"""Typed configuration: dataclass defaults, overridden by a YAML file, overridden by CLI flags.

Each stage defines a dataclass; `add_config_arguments` turns its fields into `--flags` and
`load_config` merges the three layers. Field metadata may carry `help` and `choices`; fields
sharing a `one_of` name are alternatives, exactly one of which must be given. A numeric field
declares its bounds (`minimum`, `above`, `maximum`, `below`), checked here for flags and YAML alike
(`out_of_bounds`): a bad number ends the command in one line, exit 2, as the config is made.

A field whose type is itself a dataclass is a section: a mapping of its own in YAML (`input:` in a
run.yaml), while its flags stay flat (`--augment`, not `--input.augment`). Its options are also
accepted flat at the top of a YAML file, as run.yaml files written before the section existed have them.
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hpcvision.errors import UserError

T = TypeVar("T")

# The bounds a numeric option may declare in its metadata: the test a value must pass, as a message writes it.
BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "minimum": (operator.ge, ">="),
    "above": (operator.gt, ">"),
    "maximum": (operator.le, "<="),
    "below": (operator.lt, "<"),
}


def option(default: Any, help_text: str, **metadata: Any) -> Any:
    """A dataclass field with a default, its `--help` text and any other metadata (`choices`, `flag`...)."""
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


def fraction(text: str) -> float:
    """A fraction given as a number (0.05) or a percentage ("5%"): the `parse` of such an option."""
    text = text.strip()
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def required(help_text: str, **metadata: Any) -> Any:
    """A dataclass field without a default (a required option), its `--help` text and other metadata."""
    return dataclasses.field(metadata={"help": help_text, **metadata})


def check_choices(config: Any) -> None:
    """UserError unless every field of `config` whose metadata lists `choices` holds one of them."""
    for field in dataclasses.fields(config):
        choices, value = field.metadata.get("choices"), getattr(config, field.name)
        if choices and value is not None and value not in choices:
            raise UserError(f"option '{field.name}' must be one of {', '.join(map(str, choices))}, got {value!r}")


def out_of_bounds(value: Any, bounds: Mapping[str, Any]) -> str | None:
    """'must be > 0 and <= 1' if `value` (or an item of a list) breaks one of the `BOUNDS` in `bounds`, else None."""
    declared = [(key, bounds[key]) for key in BOUNDS if key in bounds]
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        if item is not None and not all(BOUNDS[key][0](item, limit) for key, limit in declared):
            return "must be " + " and ".join(f"{BOUNDS[key][1]} {limit}" for key, limit in declared)
    return None


def bounded(scalar: type, **bounds: Any) -> Callable[[str], Any]:
    """An argparse `type` for a plain parser (the tutorials'): `scalar(text)`, refused outside `bounds`."""
    def convert(text: str) -> Any:
        value = scalar(text)
        problem = out_of_bounds(value, bounds)
        if problem:
            raise argparse.ArgumentTypeError(f"{text}: {problem}")
        return value

    convert.__name__ = scalar.__name__  # argparse's "invalid int value" names the type by it
    convert.bounds = bounds  # type: ignore[attr-defined]  # so a test can see the option declares them
    return convert


def _section(annotation: Any) -> type | None:
    """The dataclass of a section field (one whose type is a dataclass), else None."""
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def _strip_none(annotation: Any) -> Any:
    """`X` of an optional `X | None`; any other annotation as it is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """The scalar type argparse converts with, and whether the field is a list."""
    annotation = _strip_none(annotation)
    if typing.get_origin(annotation) in (list, tuple):
        args = typing.get_args(annotation)
        return (args[0] if args else str), True
    return annotation, False


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--field-name` option per dataclass field; options not given stay unset.

    Field metadata may also set `flag` (another option name), `aliases` (more names), `metavar`, `parse`
    (what turns the flag's text, or a YAML string, into the value, e.g. `fraction`),
    `positional`, `nargs` (e.g. argparse.REMAINDER), `repeat` (a list given one value per use of the
    flag), `one_of` (a group name: its fields become a required mutually exclusive group) and `needed`
    (when an option with a default of None must still be given: "required unless --synthetic"); a field
    without a default is a required option; its help says "(required)", others' their default. A
    `recorded` field gets no flag: only its YAML key (what a command writes there for itself, such as
    run.yaml's global batch).
    """
    _add_arguments(parser, cls, "")


def _add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, prefix: str) -> None:
    """The options of `cls`; a section's go in a help group, under dests prefixed `section.`."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    members: dict[str, list[str]] = {}
    for field in dataclasses.fields(cls):
        if field.metadata.get("one_of"):
            members.setdefault(field.metadata["one_of"], []).append(_flag(field))
    for field in dataclasses.fields(cls):
        if field.metadata.get("recorded"):  # bookkeeping a command writes into its YAML, not an option
            continue
        section = _section(hints[field.name])
        if section is not None:
            title = f"{field.name} options (the '{field.name}:' section of a config file)"
            # One level of help groups: argparse deprecates a group inside a group.
            group = parser.add_argument_group(title, field.metadata.get("help")) if not prefix else parser
            _add_arguments(group, section, f"{prefix}{field.name}.")
            continue
        scalar, is_list = _flag_type(hints[field.name])
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        positional = bool(field.metadata.get("positional"))
        one_of = field.metadata.get("one_of")
        alternatives = " or ".join(f for f in members.get(one_of, []) if f != _flag(field)) if one_of else ""
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS,
                                  "help": _help(field, required and not positional, alternatives)}
        kwargs.update({key: field.metadata[key] for key in ("metavar", "choices") if key in field.metadata})
        nargs = field.metadata.get("nargs", "+" if is_list else None)
        if positional:
            parser.add_argument(field.name, type=scalar, nargs=nargs, **kwargs)
            continue
        if one_of and one_of not in groups:
            groups[one_of] = parser.add_mutually_exclusive_group(required=True)
        target = groups.get(one_of, parser)
        flags = [_flag(field), *field.metadata.get("aliases", ())]
        kwargs.update(dest=prefix + field.name, required=required)
        if scalar is bool:
            target.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if prefix and "choices" not in kwargs:
            kwargs.setdefault("metavar", field.name.upper())  # not the dotted dest of a section's option
        if field.metadata.get("repeat"):
            kwargs["action"], nargs = "append", None  # one value per use of the flag
        target.add_argument(*flags, type=field.metadata.get("parse", scalar), nargs=nargs, **kwargs)


def _flag(field: dataclasses.Field) -> str:
    """The option name of a field: `--field-name` unless its metadata names another `flag`."""
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _help(field: dataclasses.Field, required: bool, alternatives: str = "") -> str:
    """The field's help and what the reader must know to use it: "(required)", "(required unless ...)"
    (metadata `needed`), or its default; none for a None default (the help says what unset means)."""
    help_text = field.metadata.get("help", "")
    if required:
        return f"{help_text} (required)"
    if alternatives:
        return f"{help_text} (required, or {alternatives})"
    if field.metadata.get("needed"):
        return f"{help_text} ({field.metadata['needed']})"
    default = _default(field)
    if "default:" in help_text or default is None or default in ((), []):  # said already, or nothing to say
        return help_text
    return f"{help_text} (default: {_show(default)})" if help_text else f"default: {_show(default)}"


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default if field.default is not dataclasses.MISSING else None


def _show(value: Any) -> str:
    """A default as one types it on the command line: lists as space-separated values."""
    if isinstance(value, list | tuple):
        return " ".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return str(value)


def _check_type(cls: type, name: str, value: Any, source: str, where: str = "") -> Any:
    """`value` of field `name` read from a file, converted to the field's type; UserError naming it if wrong."""
    annotation = typing.get_type_hints(cls)[name]
    scalar, is_list = _flag_type(annotation)
    if value is None:
        if type(None) not in typing.get_args(annotation):
            raise UserError(f"{source}: '{where}{name}' must be {scalar.__name__}, got null")
        return value
    parse = _field(cls, name).metadata.get("parse")
    if parse is not None and isinstance(value, str):  # e.g. max_skipped: 5%
        try:
            value = parse(value)
        except ValueError:
            raise UserError(f"{source}: '{where}{name}' must be {parse.__name__}, got {value!r}") from None
    items = value if is_list else [value]
    if is_list and not isinstance(value, list):
        raise UserError(f"{source}: '{where}{name}' must be a list, got {value!r}")
    for item in items:
        ok = isinstance(item, scalar) or (scalar is float and isinstance(item, int) and not isinstance(item, bool))
        if scalar is int and isinstance(item, bool):
            ok = False
        if not ok:
            raise UserError(f"{source}: '{where}{name}' must be {scalar.__name__}, got {item!r}")
    typed = [scalar(i) for i in items] if is_list else scalar(value)
    problem = out_of_bounds(typed, _field(cls, name).metadata)
    if problem:
        raise UserError(f"{source}: '{where}{name}' {problem}, got {value!r}")
    return typed


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _sections(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: s for f in dataclasses.fields(cls) if (s := _section(hints[f.name])) is not None}


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file of option: value (run.yaml, a recipe); one line naming the file if it is not one."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read config: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: config must be a mapping of option: value")
    return data


def _file_values(cls: type, data: dict[str, Any], source: str, where: str = "") -> dict[str, Any]:
    """The options of `cls` in a YAML mapping, checked and typed; a section's as a dict of their own."""
    names, sections = {f.name for f in dataclasses.fields(cls)}, _sections(cls)
    owners = {f.name: section for section, sub in sections.items() for f in dataclasses.fields(sub)}
    values: dict[str, Any] = {}
    flat: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        owner = owners.get(name)
        if name in sections:
            if not isinstance(value, dict | None):
                raise UserError(f"{source}: '{where}{name}' must be a mapping of option: value, got {value!r}")
            values[name] = _file_values(sections[name], value or {}, source, f"{where}{name}.")
        elif name in names:
            values[name] = _check_type(cls, name, value, source, where)
        elif owner is not None:
            # A section's option at top level, as run.yaml files written before the section have them;
            # there null meant "the default".
            if value is not None:
                flat.setdefault(owner, {})[name] = _check_type(sections[owner], name, value, source, where)
        else:
            scope = f" in {where[:-1]}" if where else ""
            raise UserError(f"{source}: unknown option '{where}{key}' (known{scope}: {', '.join(sorted(names))})")
    for owner, items in flat.items():
        for name in items:
            if name in values.get(owner, {}):
                raise UserError(f"{source}: '{name}' is given twice, at top level and in '{owner}:'")
        values.setdefault(owner, {}).update(items)
    return values


def _flag_values(cls: type, args: argparse.Namespace, values: dict[str, Any], prefix: str = "") -> None:
    """Update `values` with the options given as flags (dests `prefix + name`, as _add_arguments names them)."""
    sections = _sections(cls)
    for field in dataclasses.fields(cls):
        if field.name in sections:
            _flag_values(sections[field.name], args, values.setdefault(field.name, {}), f"{prefix}{field.name}.")
        elif hasattr(args, prefix + field.name):
            value = getattr(args, prefix + field.name)
            problem = out_of_bounds(value, field.metadata)
            if problem:
                raise UserError(f"{_flag(field)} {_show(value)}: {problem}")
            values[field.name] = value


def _check_one_of(config: Any) -> None:
    """UserError unless exactly one field of each `one_of` group of `config` is set."""
    groups: dict[str, list[dataclasses.Field]] = {}
    for field in dataclasses.fields(config):
        if field.metadata.get("one_of"):
            groups.setdefault(field.metadata["one_of"], []).append(field)
    for fields in groups.values():
        if sum(getattr(config, f.name) is not None for f in fields) != 1:
            raise UserError(f"give exactly one of {' or '.join(map(_flag, fields))}")


def _build(cls: type[T], values: dict[str, Any]) -> T:
    hints, sections = typing.get_type_hints(cls), _sections(cls)
    kwargs = {}
    for name, value in values.items():
        if name in sections:
            value = _build(sections[name], value)
        elif isinstance(value, list) and typing.get_origin(_strip_none(hints[name])) is tuple:
            value = tuple(value)  # YAML and nargs="+" give lists
        kwargs[name] = value
    config = cls(**kwargs)
    check_choices(config)
    _check_one_of(config)
    return config


def load_config(cls: type[T], args: argparse.Namespace | None = None, yaml_path: str | Path | None = None) -> T:
    """Build `cls` from its defaults, then the YAML file, then the flags set in `args`."""
    values = _file_values(cls, read_yaml(Path(yaml_path)), str(yaml_path)) if yaml_path else {}
    if args is not None:
        _flag_values(cls, args, values)
    return _build(cls, values)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what yaml.safe_dump writes."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return [_plain(item) for item in value] if isinstance(value, list | tuple) else value


def save_config(config: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML, so a run records exactly what it ran with."""
    Path(path).write_text(yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False))
