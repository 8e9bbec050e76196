"""Shared fixtures. Tests run the CLI in-process through `run_cli` or as a subprocess via `hpcvision_exe`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HPCVISION_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
