"""The ImageNet-shape benchmark runs (its figures are printed by the script, not asserted here)."""


def test_imagenet_scale_benchmark_smoke(run_benchmark, tmp_path):
    code, stdout, _ = run_benchmark("imagenet_scale", "--quick", "--cache", tmp_path)
    assert code == 0
    assert "ratio build / (a) = " in stdout and "peak RSS: main " in stdout
    assert "list of 20,000 lines parsed" in stdout
