"""Shared fixtures. Tests run the CLI in-process through `run_cli` or as a subprocess via `hpcvision_exe`,
and benchmark scripts in-process through `run_benchmark`."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HPCVISION_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_cli(capsys):
    """Run `hpcvision ARGS...` in this process; returns (exit code, stdout, stderr)."""
    from hpcvision.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def hpcvision_exe() -> list[str]:
    """The command line that starts the CLI in a fresh process."""
    exe = shutil.which("hpcvision", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "hpcvision"]


@pytest.fixture
def run_benchmark(capsys):
    """Run `benchmarks/NAME.py ARGS...` in this process; returns (exit code, stdout, stderr).

    Loading the script as a module instead of starting a fresh interpreter saves its imports
    (TensorFlow is already loaded here): a smoke run costs seconds. SystemExit becomes the exit code.
    """

    def run(name: str, *args: str) -> tuple[int | str, str, str]:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            code = module.main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return (0 if code is None else code), out, err

    return run


@pytest.fixture
def train(run_cli, caplog):
    """Run `hpcvision train ARGS` in this process; (exit code, INFO messages of hpcvision and stderr lines)."""
    caplog.set_level(logging.INFO, logger="hpcvision")

    def run(*args):
        caplog.clear()
        code, _out, err = run_cli("train", *args)
        return code, [r.getMessage() for r in caplog.records] + err.splitlines()

    return run


@pytest.fixture(scope="module")
def records(tmp_path_factory, hpcvision_exe):
    """10 classes x 20 images a split, 2 shards each (tests/train_records.py): built once per test module."""
    from train_records import build_records

    return build_records(tmp_path_factory.mktemp("records"), hpcvision_exe)
