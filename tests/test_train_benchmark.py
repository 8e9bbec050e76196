"""The training benchmark still runs (`--quick`), so its figures can be reproduced."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_train_step_benchmark_quick(run_benchmark):
    code, stdout, stderr = run_benchmark("train_step", "--quick")
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    ratios = re.findall(r"ratio .*:\s+([\d.]+)", stdout)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios), stdout
