"""Start-up cost of `hpcvision cluster show` and `hpcvision job slurm train` against `python -c pass`.

These commands run on login nodes and at the top of every batch job, on every rank: they must not
import TensorFlow (5-7 s, ~600 MB here). The figure is the wall time per command and its ratio to a
bare Python start-up measured in the same run; the in-process cost of discovery for a 1,024-node
Slurm job and of rendering one script is printed alongside. `--quick`: fewer repeats, no TF baseline.

    .venv/bin/python benchmarks/discovery.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECK_NO_TF = (
    "import sys; from hpcvision.cli import main; code = main(sys.argv[1:]); "
    "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; sys.exit(code)"
)


def wall(argv: list[str], env: dict, repeats: int) -> float:
    """Median wall seconds of running argv `repeats` times (after one warm-up run)."""
    subprocess.run(argv, env=env, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def slurm_env(nodes: int, rank: int) -> dict:
    return {"SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": str(nodes * 4), "SLURM_JOB_ID": "123",
            "SLURM_STEP_NODELIST": f"nid[{0:05d}-{nodes - 1:05d}]", "SLURM_STEP_TASKS_PER_NODE": f"4(x{nodes})",
            "SLURM_GPUS_PER_NODE": "4"}


def in_process(repeats: int) -> tuple[float, float]:
    """Seconds per cluster plan of a 1,024-node x 4-task Slurm job, and per rendered train script."""
    from hpcvision.cluster.config import JobConfig
    from hpcvision.cluster.jobscript import JobSpec, render
    from hpcvision.cluster.plan import plan_cluster

    env = slurm_env(1024, 4095)
    start = time.perf_counter()
    for _ in range(repeats):
        plan = plan_cluster(1, env)
    per_discovery = (time.perf_counter() - start) / repeats
    assert len(plan.tf_config["cluster"]["worker"]) == 1024 * 4 - 2
    spec = JobSpec(scheduler="slurm", stage="train", options=JobConfig(nodes=64, tasks_per_node=4, walltime="12:00:00"),
                   stage_args=["--data", "/scratch/rec", "--model", "resnet50"])
    start = time.perf_counter()
    for _ in range(repeats * 10):
        render(spec)
    return per_discovery, (time.perf_counter() - start) / (repeats * 10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, no TensorFlow baseline")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "HPCVISION_PROGRESS": "0"}
    env.pop("TF_CONFIG", None)
    py = sys.executable

    with tempfile.TemporaryDirectory() as tmp:
        nodefile = Path(tmp) / "nodes"
        nodefile.write_text("n1\n" * 4 + "n2\n" * 4)
        job_env = {**env, "PBS_NODEFILE": str(nodefile), "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8"}
        baseline = wall([py, "-c", "pass"], env, repeats)
        show = wall([py, "-c", CHECK_NO_TF, "cluster", "show", "--ps", "1"], job_env, repeats)
        script = wall([py, "-c", CHECK_NO_TF, "job", "slurm", "train", "--nodes", "4", "--walltime", "01:00:00",
                       "--out", str(Path(tmp) / "t.sbatch"), "--", "--data", "/x"], env, repeats)
        tf_import = None if args.quick else wall([py, "-c", "import tensorflow"], env, 1)

    per_discovery, per_render = in_process(3 if args.quick else 20)
    print(f"machine: {os.cpu_count()} CPUs; median of {repeats} runs; python -c pass = {baseline * 1e3:.0f} ms")
    print(f"hpcvision cluster show --ps 1 (PBS, 8 ranks):  {show * 1e3:6.0f} ms  = {show / baseline:4.1f}x python -c pass")
    print(f"hpcvision job slurm train --out FILE:          {script * 1e3:6.0f} ms  = {script / baseline:4.1f}x python -c pass")
    if tf_import is not None:
        print(f"python -c 'import tensorflow' (avoided):       {tf_import * 1e3:6.0f} ms  = "
              f"{tf_import / baseline:4.1f}x python -c pass")
    print(f"in process: discovery of a 1,024-node x 4-task Slurm job {per_discovery * 1e3:.1f} ms; "
          f"one train script rendered in {per_render * 1e3:.2f} ms")
    print("tensorflow imported by either command: no (asserted in each run)")


if __name__ == "__main__":
    main()
