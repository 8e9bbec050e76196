"""The discovery benchmark still runs (its --quick smoke mode) and reports no TensorFlow import."""

from __future__ import annotations


def test_discovery_benchmark_quick(run_benchmark):
    # In-process: the benchmark itself still starts each command in a fresh interpreter to time it.
    code, stdout, stderr = run_benchmark("discovery", "--quick")
    assert code == 0, stderr
    assert "x python -c pass" in stdout
    assert "tensorflow imported by either command: no" in stdout
