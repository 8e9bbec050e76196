"""The course lessons: each tutorial's numbers against an independent reference, and its outputs."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from hpcvision.tutorials.commands import TUTORIALS


def outputs(out: Path) -> tuple[dict, list[str]]:
    """results.json (parsed) and the PNG files a tutorial wrote under `out`."""
    results = json.loads((out / "results.json").read_text())
    pngs = sorted(p.name for p in out.glob("*.png"))
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    return results, pngs


# --- command line -------------------------------------------------------------------------------


def test_list_shows_all_six_with_descriptions(run_cli):
    code, out, _ = run_cli("tutorial", "--list")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(TUTORIALS)
    assert len(TUTORIALS) == 6
    for line in lines:
        assert len(line.split(None, 1)[1]) > 20, line  # a real one-line description from the docstring
    assert run_cli("tutorial") == (0, out, "")  # no NAME lists them too


def test_unknown_tutorial_is_a_one_line_error(run_cli):
    code, _, err = run_cli("tutorial", "no-such-lesson")
    assert code == 2
    assert err.strip().startswith("hpcvision: error: tutorial 'no-such-lesson'") and "\n" not in err.strip()


def test_each_tutorial_has_main_and_parser():
    for module_name in TUTORIALS.values():
        module = importlib.import_module(f"hpcvision.tutorials.{module_name}")
        assert module.__doc__.lstrip().splitlines()[0]
        assert "Run:" in module.__doc__, f"{module_name}: docstring must say how to run it"
        assert callable(module.main)
        assert module.build_parser().parse_args(["--out", "x"]).out == "x"


# --- regression ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    from hpcvision.tutorials import regression

    out = tmp_path_factory.mktemp("regression")
    return out, regression.main(out, keras_epochs=10)


def test_regression_least_squares_recovers_and_matches_numpy(regression_run):
    from hpcvision.tutorials.regression import make_linear_data

    out, _ = regression_run
    results, pngs = outputs(out)
    assert {"linear_fit.png", "loss_curves.png", "nonlinear_fits.png"} <= set(pngs)
    assert abs(results["lstsq_m"] - results["true_m"]) <= 0.01 * abs(results["true_m"])
    assert abs(results["lstsq_b"] - results["true_b"]) <= 0.01 * abs(results["true_b"])
    x, y = make_linear_data(results["n"], results["true_m"], results["true_b"], results["noise"], results["seed"])
    (m, b), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)
    assert results["lstsq_m"] == pytest.approx(m, abs=1e-6)
    assert results["lstsq_b"] == pytest.approx(b, abs=1e-6)


def test_regression_gradient_descent_reaches_least_squares_loss(regression_run):
    _, results = regression_run
    assert results["gd_loss"] >= results["lstsq_loss"] - 1e-12  # least squares is the minimum
    assert results["gd_loss"] - results["lstsq_loss"] < 1e-3
    assert results["gd_losses"][0] > 10 * results["gd_losses"][-1]  # it actually descended
    for key in ("m", "b"):
        assert results[f"gd_{key}"] == pytest.approx(results[f"lstsq_{key}"], abs=1e-3)


def test_regression_keras_and_nonlinear_fits(regression_run):
    _, results = regression_run
    assert results["keras_m"] == pytest.approx(results["true_m"], rel=0.02)
    assert results["keras_b"] == pytest.approx(results["true_b"], rel=0.02)
    assert set(results["nonlinear"]) == {"quadratic", "polynomial", "exponential", "logistic"}
    for name, fit in results["nonlinear"].items():
        np.testing.assert_allclose(fit["fit"], fit["true"], rtol=0.05, atol=0.02, err_msg=name)
        assert fit["loss"] < 2 * 0.05**2, name  # near the noise variance the data were drawn with


def test_regression_normal_equations_on_exact_line():
    from hpcvision.tutorials.regression import least_squares_line

    x = np.array([-2.0, 0.0, 1.0, 4.0])
    assert least_squares_line(x, 1.5 * x - 0.25) == pytest.approx((1.5, -0.25), abs=1e-12)


# --- basics -------------------------------------------------------------------------------------


def test_basics_graph_scopes_device_and_tensorboard(run_cli, tmp_path):
    code, out, _ = run_cli("tutorial", "basics", "--out", tmp_path)
    assert code == 0 and "graph of line_loss" in out
    results, pngs = outputs(tmp_path)
    assert pngs == ["graph.png"]
    assert results["eager"] == {"matmul": [-1.5, -2.5], "sum": -4.0}
    x = np.asarray(results["x"])
    y = results["m"] * x + results["b"]
    np.testing.assert_allclose(results["y"], y, atol=1e-6)
    assert results["loss"] == pytest.approx(np.mean((y - (0.3 * x - 3.0)) ** 2), abs=1e-5)
    ops = {op["name"]: op for op in results["operations"]}
    assert {"model/m_times_x", "model/y", "loss/residual", "loss/mean"} <= set(ops)
    assert ops["model/y"]["device"].endswith(results["device"].lstrip("/").split(":")[0] + ":0")
    assert ops["loss/mean"]["inputs"][0] == "loss/squared"
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_basics_runs_as_a_module_script(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "hpcvision.tutorials.basics", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {tmp_path / 'b' / 'results.json'}" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # nothing written outside --out


# --- neural network -----------------------------------------------------------------------------


def test_neural_net_hand_gradients_equal_gradient_tape(tmp_path):
    from hpcvision.tutorials import neural_net

    results = neural_net.main(tmp_path, steps=300)
    _, pngs = outputs(tmp_path)
    assert pngs == ["activations.png", "training.png"]
    assert results["grad_max_abs_diff"]["identity"] < 1e-6
    assert results["grad_max_abs_diff"]["softmax"] < 1e-6
    assert results["final_loss"] < 0.5 * results["initial_loss"]


def test_neural_net_gradients_on_other_shapes_and_a_wrong_gradient_is_caught():
    from hpcvision.tutorials import neural_net

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(7, 3))
    w = neural_net.init_weights(2, 5, 3, seed=5)
    assert neural_net.max_gradient_difference(w, x, y, "identity") < 1e-6
    _, hand = neural_net.backprop(w, x, y, "identity")
    _, auto = neural_net.tape_gradients(w, x, y, "identity")
    # The chain rule's sigma' factor matters: dropping it must change the gradient visibly.
    z = neural_net.logistic(x @ w["alpha"] + w["alpha0"])
    d_z = (2.0 * (z @ w["beta"] + w["beta0"] - y) / len(x)) @ w["beta"].T
    assert np.max(np.abs(x.T @ d_z - auto["alpha"])) > 1e-3
    np.testing.assert_allclose(hand["alpha"], auto["alpha"], atol=1e-9)


# --- convolution --------------------------------------------------------------------------------


def test_convolution_kernels_equal_scipy(run_cli, tmp_path):
    code, _, _ = run_cli("tutorial", "convolution", "--out", tmp_path, "--image", "coffee")
    assert code == 0
    results, pngs = outputs(tmp_path)
    assert pngs == ["kernels.png", "rolling_average.png"]
    assert results["image"] == "coffee" and results["image_shape"] == [400, 600]
    assert set(results["kernel_max_abs_diff"]) == {
        "box blur", "gaussian blur", "sharpen", "sobel x", "sobel y", "outline", "emboss"}
    for name, diff in results["kernel_max_abs_diff"].items():
        assert diff < 1e-5, name
    assert results["rolling_max_abs_diff"] < 1e-5


def test_convolution_is_true_convolution_not_correlation():
    from scipy import ndimage, signal

    from hpcvision.tutorials.convolution import convolve_tf, gaussian_kernel

    rng = np.random.default_rng(1)
    image = rng.random((23, 31)).astype(np.float32)
    kernels = {"asymmetric": rng.normal(size=(3, 3)), "wide": rng.normal(size=(5, 5))}
    got = convolve_tf(image, kernels)
    for name, kernel in kernels.items():
        expected = ndimage.convolve(image.astype(np.float64), kernel, mode="constant", cval=0.0)
        np.testing.assert_allclose(got[name], expected, atol=1e-5, err_msg=name)
        flipped = signal.correlate2d(image, kernel, mode="same")
        assert np.max(np.abs(got[name] - flipped)) > 1e-2  # would pass only if the flip were missing
    assert gaussian_kernel(5, 1.0).sum() == pytest.approx(1.0)


def test_convolution_rejects_even_width(run_cli, tmp_path):
    code, _, err = run_cli("tutorial", "convolution", "--out", tmp_path, "--width", "4")
    assert code == 2 and "--width 4" in err


# --- cnn ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cnn_trains_and_plots_filters_and_feature_maps(tmp_path):
    from hpcvision.tutorials import cnn

    results = cnn.main(tmp_path, epochs=2, train_samples=1024, test_samples=256, batch_size=64, model="tiny")
    _, pngs = outputs(tmp_path)
    assert pngs == ["feature_maps.png", "filters.png", "training.png"]
    assert results["data"] in ("fashion-mnist", "synthetic") and results["model"] == "tiny"
    assert results["train_samples"] == 1024 and results["test_samples"] == 256
    assert results["test_accuracy"] > 0.4  # chance is 0.1
    assert results["history"]["loss"][-1] < results["history"]["loss"][0]
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


def test_cnn_auto_model_is_the_registered_small_one_and_its_feature_maps_work():
    import keras

    from hpcvision.models.registry import model_names
    from hpcvision.tutorials.cnn import as_model_input, choose_model, first_conv

    name, net = choose_model("auto")
    assert name == ("small" if "small" in model_names() else "tiny")
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    x = as_model_input(images, net.input_shape[-1])
    assert x.shape == (2, 28, 28, net.input_shape[-1]) and x.max() <= 1.0
    np.testing.assert_array_equal(x[..., 0], x[..., -1])  # gray repeated into every channel
    conv = first_conv(net)
    maps = keras.Model(net.inputs, conv.output).predict(x, verbose=0)
    assert maps.shape[:3] == (2, 28, 28) and maps.shape[-1] == conv.get_weights()[0].shape[-1]
    assert net.predict(x, verbose=0).shape == (2, 10)


@pytest.mark.slow
def test_cnn_falls_back_to_synthetic_data_with_a_note(tmp_path, capsys):
    from hpcvision.tutorials import cnn

    results = cnn.main(tmp_path, epochs=1, train_samples=256, test_samples=64,
                       fashion_mnist=str(tmp_path / "missing"), model="tiny")
    assert results["data"] == "synthetic"
    assert "SYNTHETIC" in capsys.readouterr().out


# --- distributed regression ---------------------------------------------------------------------


def _distributed_regression_in(tmp_path):
    """(folder, results) of the tutorial's cluster, run once more only if a task died of a signal before
    writing a line: TensorFlow's start-up crashed so (SIGSEGV, empty log) in 1 of 7 runs on the loaded
    2-core CI VM, then passed 3 reruns. The crash is reported as a warning; a second one fails the test."""
    from hpcvision.errors import UserError
    from hpcvision.tutorials import distributed_regression

    try:
        return tmp_path, distributed_regression.main(tmp_path, steps=300, timeout=240)
    except UserError as exc:
        if "exited with code -" not in str(exc) or not str(exc).endswith("(empty log)"):
            raise
        warnings.warn(f"distributed_regression: a task crashed at start-up, run again once: {exc}", stacklevel=2)
    again = tmp_path / "again"
    again.mkdir()
    return again, distributed_regression.main(again, steps=300, timeout=240)


@pytest.mark.slow
def test_distributed_regression_recovers_m_b_and_stops_its_processes(tmp_path):
    tmp_path, results = _distributed_regression_in(tmp_path)
    _, pngs = outputs(tmp_path)
    assert pngs == ["convergence.png", "fit.png"]
    assert results["m"] == pytest.approx(0.3, rel=0.02)
    assert results["b"] == pytest.approx(-3.0, rel=0.02)
    assert results["steps_done"] == 300
    assert set(results["pids"]) == {"ps-0", "worker-0", "worker-1", "chief-0"}
    for pid in results["pids"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for task in ("ps-0", "worker-0", "worker-1"):
        assert "serving at grpc://" in (tmp_path / "logs" / f"{task}.log").read_text()


@pytest.mark.slow
def test_distributed_regression_stops_servers_when_the_chief_fails(tmp_path, monkeypatch):
    from hpcvision.errors import UserError
    from hpcvision.tutorials import distributed_regression

    started = []
    real_start = distributed_regression.start_task

    def start_and_record(code, config, log_path):
        if "chief_entry" in code[0]:
            code = ["import sys; sys.exit('chief failed on purpose')"]
        process = real_start(code, config, log_path)
        started.append(process)
        return process

    monkeypatch.setattr(distributed_regression, "start_task", start_and_record)
    with pytest.raises(UserError, match="chief exited with code 1"):
        distributed_regression.main(tmp_path, steps=10, timeout=120)
    assert len(started) == 4
    for process in started:
        assert process.returncode is not None  # waited for: nothing left running


# --- benchmark ----------------------------------------------------------------------------------


def test_benchmark_quick_runs_every_stage(run_benchmark):
    code, stdout, _ = run_benchmark("tutorials", "--quick")
    assert code == 0
    lines = stdout.splitlines()
    for stage in ("regression", "neural-net", "convolution", "cnn"):
        assert any(line.startswith(stage) and "ratio" in line for line in lines), stage
