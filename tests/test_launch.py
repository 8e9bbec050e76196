"""`hpcvision launch`: local clusters on 127.0.0.1 (all-reduce and parameter servers), failures, resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_records import build_records

from hpcvision.cluster import launch
from hpcvision.train.runs import scalars

TRAIN = ["--synthetic", "--num-classes", "10", "--model", "small", "--image-size", "28", "--batch-size", "16",
         "--label-smoothing", "0", "--log-every", "5", "--seed", "3"]

FAKE_TRAINER = """
import json, os, signal, sys, time
config = json.loads(os.environ["TF_CONFIG"])
task = config["task"]
print("address", config["cluster"][task["type"]][task["index"]], "threads", os.environ.get("TF_NUM_INTRAOP_THREADS"))
sys.stdout.flush()
if task["type"] == "worker" and task["index"] == 1:
    time.sleep(0.5)
    sys.exit(3)
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(60)
"""


def test_local_cluster_layouts():
    cluster, tasks = launch.local_cluster(2, 0)
    assert list(cluster) == ["worker"] and [t.name for t in tasks] == ["worker0", "worker1"]
    cluster, tasks = launch.local_cluster(2, 1)
    assert [t.name for t in tasks] == ["chief", "ps0", "worker0", "worker1"]
    addresses = [a for role in cluster.values() for a in role]
    assert len(set(addresses)) == 4 and all(a.startswith("127.0.0.1:") for a in addresses)


def test_launch_options_and_the_train_arguments_after_the_separator():
    from hpcvision.cli import build_parser
    from hpcvision.config import load_config
    from hpcvision.train.config import LaunchConfig

    parser = build_parser()
    config = load_config(LaunchConfig, parser.parse_args(["launch", "--ps", "1", "--", "--data", "d", "--steps", "5"]))
    assert config == LaunchConfig(train_args=("--", "--data", "d", "--steps", "5"), workers=2, ps=1, threads=1,
                                  grace=launch.GRACE_S)
    assert load_config(LaunchConfig, parser.parse_args(["launch"])).train_args == ()
    with pytest.raises(SystemExit):  # train options belong after `--`
        parser.parse_args(["launch", "--data", "d"])


@pytest.mark.parametrize("ignore_term", [False, True])
def test_a_failing_process_stops_the_others(capsys, monkeypatch, ignore_term):
    monkeypatch.setattr(launch, "GRACE_S", 1.0)
    if ignore_term:
        monkeypatch.setenv("IGNORE_TERM", "1")
    code = launch.launch_local([], workers=3, command=[sys.executable, "-c", FAKE_TRAINER])
    out = capsys.readouterr().out
    assert code == 3, out
    addresses = re.findall(r"^\[worker(\d)\] address (\S+) threads 1$", out, re.M)
    assert sorted(i for i, _ in addresses) == ["0", "1", "2"] and len({a for _, a in addresses}) == 3
    assert "[launch] worker1 exited with code 3; stopping the others" in out
    assert ("did not stop after SIGTERM; killing" in out) == ignore_term


TRAPPING_TRAINER = """
import json, os, signal, sys, time
name = json.loads(os.environ["TF_CONFIG"])["task"]
signal.signal(signal.SIGTERM, lambda *_: (print("saved on SIGTERM", flush=True), sys.exit(0)))
print("ready", flush=True)
time.sleep(60)
sys.exit(1)
"""


def test_sigterm_to_launch_is_forwarded_to_every_process():
    driver = (f"import sys; from hpcvision.cluster.launch import launch_local; "
              f"sys.exit(launch_local([], workers=2, ps=1, command=[sys.executable, '-c', {TRAPPING_TRAINER!r}]))")
    process = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True)
    ready = 0
    for line in process.stdout:
        ready += line.rstrip().endswith("] ready")
        if ready == 4:
            process.send_signal(signal.SIGTERM)
            break
    out = process.stdout.read()
    assert process.wait(timeout=30) == 0, out
    saved = sorted(re.findall(r"^\[(\w+)\] saved on SIGTERM$", out, re.M))
    assert saved == ["chief", "ps0", "worker0", "worker1"], out


def alive(pid: int) -> bool:
    """True while `pid` runs: a zombie (dead, not yet reaped by its new parent) counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_kill_9_of_launch_takes_its_processes_with_it():
    sleeper = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]
    driver = (f"import sys; from hpcvision.cluster.launch import launch_local; "
              f"sys.exit(launch_local([], workers=2, command={sleeper!r}))")
    process = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        ready = 0
        for line in process.stdout:
            if line.startswith("[launch] started"):
                pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", line)]
            ready += line.rstrip().endswith("] ready")
            if ready == 2:
                break
        assert len(pids) == 2 and all(map(alive, pids)), pids
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(map(alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if alive(pid)], "workers outlived launch"
    finally:
        process.kill()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def run_launch(hpcvision_exe, *args, timeout=240):
    result = subprocess.run([*hpcvision_exe, "launch", *args], capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return result.returncode, result.stdout + result.stderr


def chief_losses(output: str, chief: str) -> list[float]:
    return [float(x) for x in re.findall(rf"^\[{chief}\] .*step \d+/\d+ epoch \S+ loss (\S+)", output, re.M)]


@pytest.mark.slow
def test_two_workers_all_reduce_to_identical_weights(hpcvision_exe, tmp_path):
    records = build_records(tmp_path, hpcvision_exe)
    run = tmp_path / "run"
    code, out = run_launch(hpcvision_exe, "--workers", "2", "--", "--data", str(records), "--model", "small",
                           "--image-size", "32", "--augment", "pad_crop", "--batch-size", "10", "--epochs", "3",
                           "--log-every", "5", "--learning-rate", "0.4", "--seed", "1", "--checkpoint-dir", str(run))
    assert code == 0, out[-3000:]
    assert "multi-worker strategy, 2 replica(s), global batch 20" in out
    losses = chief_losses(out, "worker0")
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    digests = dict(re.findall(r"^\[(worker\d)\] .*finished at step 30; weights sha256 (\w+)", out, re.M))
    assert set(digests) == {"worker0", "worker1"} and digests["worker0"] == digests["worker1"], out[-3000:]
    # Each worker evaluated its half of the validation files; the all-reduced count is all 200 images.
    assert re.search(r"^\[worker0\] .*eval step 30: .*\(200 images\)", out, re.M), out[-3000:]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "ckpt-30.data-00000-of-00001", "ckpt-30.index",
                                                     "labels.json", "logs", "run.yaml"]
    # The workers leave together without Python's teardown (train.loop.exit_with_the_other_workers): the last
    # evaluation still reached TensorBoard's log, and TensorFlow saw no task vanish.
    assert 30 in [step for step, _ in scalars(run / "logs" / "eval", "top1")], out[-3000:]
    assert not re.search(r"StartAbort|unhealthy|Failed to send RPC", out), out[-3000:]


@pytest.mark.slow
def test_parameter_servers_train_and_exit_by_themselves(hpcvision_exe, tmp_path):
    code, out = run_launch(hpcvision_exe, "--workers", "2", "--ps", "1", "--", *TRAIN, "--steps", "30",
                           "--checkpoint-dir", str(tmp_path))
    assert code == 0, out[-3000:]
    assert "parameter-server strategy" in out and "finished at step 30;" in out
    losses = chief_losses(out, "chief")
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    for server in ("ps0", "worker0", "worker1"):
        assert re.search(rf"^\[{server}\] .*chief \S+ is gone; server exits", out, re.M), server
    assert "[launch] all processes exited 0" in out


@pytest.mark.slow
def test_kill_9_a_worker_then_rerun_resumes(hpcvision_exe, tmp_path):
    command = [*hpcvision_exe, "launch", "--workers", "2", "--grace", "2", "--", *TRAIN, "--steps", "40",
               "--checkpoint-every-steps", "5", "--checkpoint-dir", str(tmp_path)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    pids, killed_after = {}, None
    try:
        for line in process.stdout:
            if line.startswith("[launch] started"):
                pids = dict(re.findall(r"(worker\d) \(pid (\d+)\)", line))
            saved = re.search(r"checkpoint \S+ written \(step (\d+)\)", line)
            if saved:
                killed_after = int(saved.group(1))
                os.kill(int(pids["worker1"]), signal.SIGKILL)
                break
        rest = process.stdout.read()
        assert process.wait(timeout=120) != 0, rest
    finally:
        process.kill()
    assert killed_after and "worker1 exited with code -9" in rest, rest
    code, out = run_launch(hpcvision_exe, *command[len(hpcvision_exe) + 1:])
    assert code == 0, out[-3000:]
    resumed = re.search(r"^\[worker0\] .*resumed from \S+ckpt-(\d+) at step (\d+)", out, re.M)
    assert resumed and int(resumed.group(2)) >= killed_after > 0, out[-3000:]
    assert "finished at step 40;" in out and (tmp_path / "ckpt-40.index").is_file()
