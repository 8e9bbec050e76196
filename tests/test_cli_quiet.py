"""A quiet, quick CLI (issue 12): mistakes refused before TensorFlow is imported, help that says what is
required, and no TensorFlow/absl start-up notices unless -v."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import yaml

from hpcvision.cli import build_parser
from hpcvision.startup import NOTICE, filtered_stderr

# Runs each argv through the CLI in one fresh interpreter; per case: exit code, stderr, TensorFlow imported?
_CASES_SCRIPT = """
import contextlib, io, json, sys
from hpcvision.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    results.append([code, err.getvalue(), "tensorflow" in sys.modules])
print(json.dumps(results))
"""


def test_mistakes_fail_in_a_second_before_tensorflow(tmp_path):
    missing = str(tmp_path / "missing")
    resumed = tmp_path / "run"  # a run.yaml whose --data has gone: `train --checkpoint-dir X` alone reads it
    resumed.mkdir()
    (resumed / "run.yaml").write_text(yaml.safe_dump({"data": missing, "model": "small"}))
    cases = {
        ("train",): "--checkpoint-dir is required",
        ("train", "--checkpoint-dir", str(tmp_path / "new")): "--data DIR is required",
        ("train", "--synthetic", "--checkpoint-dir", str(tmp_path / "new")): "--synthetic needs --num-classes",
        ("train", "--data", missing, "--checkpoint-dir", str(tmp_path / "new")): "missing/train-manifest.json: no manifest",
        ("train", "--checkpoint-dir", str(resumed)): "missing/train-manifest.json: no manifest",
        ("launch", "--", "--data", missing, "--checkpoint-dir", str(tmp_path / "new")): "missing/train-manifest.json",
        ("launch", "--", "--bogus"): "unrecognized arguments: --bogus",
        ("evaluate", "--checkpoint-dir", missing, "--data", missing, "--out", str(tmp_path)): "missing/run.yaml: missing",
        ("evaluate", "--model-path", str(tmp_path), "--data", missing, "--out", str(tmp_path)): "not an hpcvision export",
        ("evaluate", "--data", missing, "--out", str(tmp_path)): "one of the arguments --checkpoint-dir --model-path",
        ("export", "--checkpoint-dir", missing, "--out", str(tmp_path / "x")): "missing/run.yaml: missing",
        ("export", "--checkpoint-dir", missing): "the following arguments are required: --out",
        ("predict", "--model-path", missing, "a.jpg"): "missing: not an hpcvision export",
        ("features", "--checkpoint-dir", missing, missing, "--out", str(tmp_path / "f.npy")): "missing/run.yaml",
    }
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CASES_SCRIPT, json.dumps(list(cases))], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    for (argv, expected), (code, err, tensorflow) in zip(cases.items(), json.loads(proc.stdout), strict=True):
        assert code == 2 and expected in err, (argv, code, err)
        assert not tensorflow, (argv, "TensorFlow was imported before the error")
        if not err.startswith("usage:"):  # argparse's own errors come with the usage lines
            assert err.count("\n") == 1, (argv, err)
    assert elapsed < 60, elapsed  # one interpreter for all; TensorFlow alone takes ~6 s to import


def _options(parser: argparse.ArgumentParser, name: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _options(subparser, f"{name} {sub}")
        elif action.option_strings and action.help not in (None, argparse.SUPPRESS):
            yield name, action


def test_help_says_required_and_each_default_once():
    seen = {}
    for command, action in _options(build_parser(), "hpcvision"):
        flag, text = action.option_strings[0], action.help
        seen[f"{command} {flag}"] = text
        assert "None" not in text and text.lower().count("default") <= 1, (command, flag, text)
        if action.required:
            assert text.endswith("(required)"), (command, flag, text)
    assert seen["hpcvision train --data"].endswith("(required unless --synthetic or --checkpoint-dir holds a run.yaml)")
    assert seen["hpcvision train --checkpoint-dir"].endswith("(required, here or in --config)")
    assert seen["hpcvision evaluate --model-path"].endswith("(required, or --checkpoint-dir)")
    assert seen["hpcvision train --epochs"].endswith("(default: 1.0)")


def test_filtered_stderr_drops_the_start_up_notices_only(capfd):
    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796232047.156797     838 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"W0000 00:00:1796232066.700387     838 dataset.cc:997] a real warning\n")
        os.write(2, b"To enable the following instructions: AVX2 AVX512F, in other operations, rebuild...\n")
        os.write(2, b"Traceback (most recent call last):\n")
    err = capfd.readouterr().err
    assert err == "W0000 00:00:1796232066.700387     838 dataset.cc:997] a real warning\n" \
                  "Traceback (most recent call last):\n", err


def test_a_short_training_run_says_only_what_it_does(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    argv = [sys.executable, "-m", "hpcvision", "train", "--synthetic", "--num-classes", "10", "--model", "small",
            "--image-size", "28", "--batch-size", "8", "--steps", "4", "--log-every", "2",
            "--checkpoint-dir", str(tmp_path / "run")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    notices = [line for line in lines if NOTICE.search(line) or " INFO absl:" in line]
    # 18 lines before issue 12, 11 of them notices (oneDNN and CPU features twice, absl's banner twice...).
    assert not notices and len(lines) <= 8, "\n".join(lines)
