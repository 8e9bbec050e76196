"""The discovery benchmark still runs (its --quick smoke mode) and reports no TensorFlow import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "discovery.py"


def test_discovery_benchmark_quick():
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "x python -c pass" in result.stdout
    assert "tensorflow imported by either command: no" in result.stdout
