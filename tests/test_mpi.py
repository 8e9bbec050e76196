"""Real multi-process runs on one machine: `mpirun --oversubscribe` with a fake PBS_NODEFILE (or fake
Slurm variables) naming localhost. Ranks discover their roles, build disjoint shards, and train with
parameter servers and with all-reduce. Loopback only."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcvision.data.records import decode_example, read_records

pytestmark = pytest.mark.slow

MPIRUN = shutil.which("mpirun")
needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="OpenMPI not installed (Debian openmpi-bin)")


def free_port_block(size: int = 8) -> int:
    """A base port whose next `size` ports were free a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65000:
            continue
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port block")


def mpirun(np: int, command: str, tmp_path: Path, env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `command` (bash, per rank; $RANK is the rank) under mpirun with `env` added.

    mpirun runs in its own session so that a hang is cleaned up completely: on timeout the whole
    process group (mpirun and every rank) is killed, by its id.
    """
    bin_dir = str(Path(sys.executable).parent)
    # One intra-op thread per rank (2 shared cores). Not TF_NUM_INTEROP_THREADS=1: parameter-server
    # training deadlocks with a single inter-op thread.
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2",
                "HPCVISION_PROGRESS": "0", "TF_NUM_INTRAOP_THREADS": "1",
                "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo", **env}
    for name in ("TF_CONFIG", "TF_NUM_INTEROP_THREADS", "HPCVISION_DISCOVERY"):
        full_env.pop(name, None)
    argv = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", str(np),
            "bash", "-c", "export RANK=$OMPI_COMM_WORLD_RANK; " + command]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            time.sleep(2)
        out, err = proc.communicate()
        pytest.fail(f"mpirun -np {np} timed out after {timeout} s; stderr tail: {err[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.fixture
def nodefile(tmp_path) -> Path:
    path = tmp_path / "nodefile"
    path.write_text("localhost\n" * 4)
    return path


def slurm_wrapper(tmp_path: Path, ntasks: int) -> Path:
    """A wrapper that gives each mpirun rank the variables srun would set for one node, `ntasks` tasks."""
    wrapper = tmp_path / "fake-srun-env.sh"
    wrapper.write_text(
        "#!/bin/bash\n"
        'export SLURM_PROCID="$OMPI_COMM_WORLD_RANK" SLURM_LOCALID="$OMPI_COMM_WORLD_LOCAL_RANK"\n'
        f"export SLURM_STEP_NUM_TASKS={ntasks} SLURM_NTASKS={ntasks} SLURM_JOB_ID=77\n"
        f"export SLURM_STEP_NODELIST=localhost SLURM_JOB_NODELIST=localhost SLURM_STEP_TASKS_PER_NODE={ntasks}\n"
        'exec "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def read_shown(tmp_path: Path, np: int) -> list[dict]:
    return [json.loads((tmp_path / f"show{r}.json").read_text()) for r in range(np)]


def check_roles(shown: list[dict], expected_types: list[str]) -> None:
    assert [s["rank"] for s in shown] == list(range(len(shown)))
    assert all(s["tf_config"]["cluster"] == shown[0]["tf_config"]["cluster"] for s in shown)
    assert [s["role"]["type"] for s in shown] == expected_types
    addresses = [a for addrs in shown[0]["tf_config"]["cluster"].values() for a in addrs]
    assert len(set(addresses)) == len(addresses)


@needs_mpirun
def test_pbs_ranks_discover_their_roles(tmp_path, nodefile):
    port = free_port_block()
    result = mpirun(3, "hpcvision cluster show --ps 1 > show$RANK.json", tmp_path,
                    {"PBS_NODEFILE": str(nodefile), "PBS_JOBID": "12.srv", "HPCVISION_BASE_PORT": str(port)})
    assert result.returncode == 0, result.stderr
    shown = read_shown(tmp_path, 3)
    assert {s["scheduler"] for s in shown} == {"pbs"}
    check_roles(shown, ["ps", "chief", "worker"])
    assert shown[0]["tf_config"]["cluster"]["ps"] == [f"localhost:{port}"]


@needs_mpirun
def test_slurm_ranks_discover_their_roles(tmp_path):
    wrapper = slurm_wrapper(tmp_path, 3)
    result = mpirun(3, f"{wrapper} hpcvision cluster show > show$RANK.json", tmp_path,
                    {"HPCVISION_BASE_PORT": str(free_port_block())})
    assert result.returncode == 0, result.stderr
    shown = read_shown(tmp_path, 3)
    assert {s["scheduler"] for s in shown} == {"slurm"}
    check_roles(shown, ["worker", "worker", "worker"])


@needs_mpirun
def test_plain_mpirun_uses_mpi4py_allgather(tmp_path):
    pytest.importorskip("mpi4py")
    result = mpirun(2, "hpcvision cluster show > show$RANK.json", tmp_path, {})
    assert result.returncode == 0, result.stderr
    shown = read_shown(tmp_path, 2)
    assert {s["scheduler"] for s in shown} == {"mpi"}
    assert shown[0]["hosts"] == [{"host": socket.gethostname(), "tasks": 2, "gpus": shown[0]["hosts"][0]["gpus"]}]
    check_roles(shown, ["worker", "worker"])


# ------------------------------------------------------------------------------ data build


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "S"
    subprocess.run([str(Path(sys.executable).parent / "hpcvision"), "data", "sample", "--source", "synthetic",
                    "--per-class", "8", "--size", "64", str(out)], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "HPCVISION_PROGRESS": "0"})
    return out


def build_command(sample: Path, out: str, log: str) -> str:
    return (f"hpcvision data build --images {sample}/Images.tar --annotations {sample}/Annotation.tar.gz "
            f"--list {sample}/train_files.txt --synsets {sample}/synsets.txt --metadata {sample}/metadata.txt "
            f"--out {out} --name train --shards 6 --wait 120 2> {log}$RANK")


def check_disjoint_complete_build(tmp_path: Path, sample: Path, out: Path, ranks: int) -> None:
    listed = [line.split()[1] for line in (sample / "train_files.txt").read_text().splitlines() if line.strip()]
    manifest = json.loads((out / "train-manifest.json").read_text())
    assert manifest["num_examples"] == len(listed) == sum(s["count"] for s in manifest["shards"])
    names = []
    for shard in manifest["shards"]:
        records = [decode_example(r) for r in read_records(out / shard["file"])]
        assert len(records) == shard["count"]
        names += [r["image/filename"][0].decode() for r in records]
    assert sorted(n.rsplit(".", 1)[0] for n in names) == sorted(listed)  # every listed image exactly once
    # Each rank reports what it wrote: the ranks' shards add up to the whole set, so none overlap.
    wrote = [re.search(r"rank (\d+) wrote (\d+) shards \((\d+) images\)", (tmp_path / f"buildlog{r}").read_text())
             for r in range(ranks)]
    assert all(wrote), [(tmp_path / f"buildlog{r}").read_text()[-500:] for r in range(ranks)]
    assert sorted(int(m.group(1)) for m in wrote) == list(range(ranks))
    assert sum(int(m.group(2)) for m in wrote) == len(manifest["shards"]) == 6
    assert sum(int(m.group(3)) for m in wrote) == len(listed)


@needs_mpirun
def test_data_build_under_mpirun_pbs_writes_disjoint_shards(tmp_path, nodefile, sample):
    result = mpirun(3, build_command(sample, "R", "buildlog"), tmp_path, {"PBS_NODEFILE": str(nodefile)})
    assert result.returncode == 0, result.stderr
    check_disjoint_complete_build(tmp_path, sample, tmp_path / "R", 3)


@needs_mpirun
def test_data_build_under_fake_slurm_writes_disjoint_shards(tmp_path, sample):
    wrapper = slurm_wrapper(tmp_path, 3)
    command = f"{wrapper} " + build_command(sample, "R", "buildlog")
    result = mpirun(3, command, tmp_path, {})
    assert result.returncode == 0, result.stderr
    check_disjoint_complete_build(tmp_path, sample, tmp_path / "R", 3)


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def records(sample, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("records")
    subprocess.run([str(Path(sys.executable).parent / "hpcvision"), "data", "build", "--images",
                    str(sample / "Images.tar"), "--annotations", str(sample / "Annotation.tar.gz"), "--list",
                    str(sample / "train_files.txt"), "--synsets", str(sample / "synsets.txt"), "--out", str(out),
                    "--name", "train", "--shards", "4"],
                   check=True, capture_output=True, timeout=120, env={**os.environ, "HPCVISION_PROGRESS": "0"})
    return out


def train_command(records: Path, checkpoint_dir: str, extra: str = "") -> str:
    return (f"exec hpcvision train --data {records} --model resnet18 --image-size 32 --batch-size 8 --steps 4 "
            f"--checkpoint-dir {checkpoint_dir} --log-every 2 --no-eval {extra} > trainlog$RANK 2>&1")


def train_logs(tmp_path: Path, ranks: int) -> list[str]:
    return [(tmp_path / f"trainlog{r}").read_text() for r in range(ranks)]


@needs_mpirun
def test_parameter_server_training_under_mpirun_pbs(tmp_path, records):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\n" * 4)
    env = {"PBS_NODEFILE": str(nodefile), "HPCVISION_BASE_PORT": str(free_port_block())}
    result = mpirun(4, train_command(records, "ck", "--num-ps 1"), tmp_path, env, timeout=420)
    logs = train_logs(tmp_path, 4)
    assert result.returncode == 0, "\n".join(log[-1500:] for log in logs)
    # Discovery: rank 0 is the ps, rank 1 the chief (next first slot), ranks 2-3 the workers.
    assert "ps0: serving" in logs[0] and "ps0: chief" in logs[0] and "server exits" in logs[0]
    assert "chief0: parameter-server strategy" in logs[1] and "finished at step 4" in logs[1]
    assert "worker0: serving" in logs[2] and "worker1: serving" in logs[3]
    assert (tmp_path / "ck" / "ckpt-4.index").exists()


@needs_mpirun
def test_all_reduce_training_under_mpirun_fake_slurm(tmp_path, records):
    wrapper = slurm_wrapper(tmp_path, 2)
    env = {"HPCVISION_BASE_PORT": str(free_port_block())}
    result = mpirun(2, f"{wrapper} bash -c {shlex.quote(train_command(records, 'ck'))}", tmp_path, env, timeout=420)
    logs = train_logs(tmp_path, 2)
    assert result.returncode == 0, "\n".join(log[-1500:] for log in logs)
    assert "worker0: multi-worker strategy, 2 replica(s)" in logs[0] + logs[1]
    digests = [re.search(r"finished at step 4; weights sha256 (\w+)", log) for log in logs]
    assert all(digests), logs[0][-1500:]
    assert digests[0].group(1) == digests[1].group(1)  # all-reduce kept both workers' weights identical
    assert (tmp_path / "ck" / "ckpt-4.index").exists()
