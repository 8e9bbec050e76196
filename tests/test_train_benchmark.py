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


@pytest.mark.slow
def test_transfer_benchmark_quick(run_benchmark):
    code, stdout, stderr = run_benchmark("transfer", "--quick")
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    scores = re.findall(r"^\s*(scratch|fine-tuned|frozen|frozen-10x): top-1 ([\d.]+)", stdout, re.M)
    assert [name for name, _ in scores] == ["scratch", "fine-tuned", "frozen", "frozen-10x"], stdout
    assert len(re.findall(r"ratio .*/scratch: top-1 x[\d.]+", stdout)) == 3, stdout
