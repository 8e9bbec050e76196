"""The training benchmark still runs (`--quick`), so its figures can be reproduced."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


@pytest.mark.slow
def test_train_step_benchmark_quick():
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=500,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    ratios = re.findall(r"ratio .*:\s+([\d.]+)", result.stdout)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios), result.stdout
