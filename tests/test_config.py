import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hpcvision.config import add_config_arguments, load_config, save_config
from hpcvision.errors import UserError


@dataclass
class Example:
    steps: int = 10
    rate: float = 0.1
    name: str = "resnet50"
    xla: bool = False
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    mode: str = field(default="a", metadata={"choices": ["a", "b"]})


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, Example)
    return parser.parse_args(argv)


def test_defaults_then_yaml_then_flags(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("steps: 50\nrate: 1\nname: vgg16\n")
    args = parse(["--config", str(yaml_file), "--name", "alexnet", "--xla", "--sizes", "3", "4"])
    cfg = load_config(Example, args, args.config)
    assert cfg == Example(steps=50, rate=1.0, name="alexnet", xla=True, sizes=[3, 4])
    assert isinstance(cfg.rate, float)


def test_yaml_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(UserError, match="bad.yaml: unknown option 'stepz'"):
        load_config(Example, None, bad)
    bad.write_text("steps: many\n")
    with pytest.raises(UserError, match="'steps' must be int"):
        load_config(Example, None, bad)
    bad.write_text("mode: c\n")
    with pytest.raises(UserError, match="must be one of a, b"):
        load_config(Example, None, bad)


def test_save_round_trip(tmp_path):
    cfg = Example(steps=7, sizes=[5])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Example, None, tmp_path / "saved.yaml") == cfg


@dataclass
class Paths:
    source: Path = field(metadata={"positional": True, "metavar": "SRC", "help": "where from"})
    out: Path = field(metadata={"help": "where to", "metavar": "DIR"})
    file_list: Path | None = field(default=None, metadata={"flag": "--list", "help": "which (default: all)"})
    workers: int = field(default=1, metadata={"help": "processes"})


def test_required_positional_renamed_and_path_options():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Paths)
    cfg = load_config(Paths, parser.parse_args(["a", "--out", "b", "--list", "c.txt"]))
    assert cfg == Paths(source=Path("a"), out=Path("b"), file_list=Path("c.txt"))
    assert load_config(Paths, parser.parse_args(["a", "--out", "b"])).file_list is None
    with pytest.raises(SystemExit):  # --out has no default: it is required
        parser.parse_args(["a"])
    with pytest.raises(SystemExit):  # the flag is --list, not --file-list
        parser.parse_args(["a", "--out", "b", "--file-list", "c"])
    usage = parser.format_help()
    assert "SRC" in usage and "--out DIR" in usage and "--list FILE_LIST" in usage
    assert "which (default: all)" in usage and "(default: None)" not in usage
    assert "processes (default: 1)" in usage and "where to (default" not in usage
