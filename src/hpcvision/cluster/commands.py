"""Subcommands of the cluster stage: `cluster show`, `job pbs|slurm STAGE`, `job resubmit`.

No TensorFlow import on these paths: they run on login nodes and at the top of every batch job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from hpcvision.cluster import jobscript
from hpcvision.cluster.config import JOB_CONFIGS, JobConfig, ResubmitConfig, ShowConfig
from hpcvision.cluster.jobscript import JobSpec
from hpcvision.cluster.plan import describe
from hpcvision.cluster.stage_options import parse_stage_options
from hpcvision.cluster.sweep import expand_grid
from hpcvision.config import add_config_arguments, load_config
from hpcvision.errors import UserError
from hpcvision.files import write_atomic

STAGE_HELP = {
    "extract": "hpcvision data extract on every task (ranks split the image list)",
    "build": "hpcvision data build on every task (ranks write disjoint shards)",
    "train": "hpcvision train on every task (roles from discovery; --ps for parameter servers; --cpu-nodes for "
             "a mixed CPU+GPU job)",
    "evaluate": "hpcvision evaluate, one process",
    "sweep": "hpcvision train over a grid of options (--grid KEY=V1,V2), one array task and run folder per point",
    "pipeline": "all four as dependent jobs; stage arguments: -- extract: ... build: ... train: ... evaluate: ...",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the top-level parser."""
    _register_cluster(subparsers)
    _register_job(subparsers)


def _register_cluster(subparsers: argparse._SubParsersAction) -> None:
    cluster = subparsers.add_parser("cluster", help="what the scheduler/launcher says about this job")
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print scheduler, hosts, this rank, its role and the TF_CONFIG it would use",
        description="Discover the job from TF_CONFIG, Slurm, PBS or mpirun and print it as JSON.",
    )
    add_config_arguments(show, ShowConfig)
    show.set_defaults(func=run_cluster_show)


def _register_job(subparsers: argparse._SubParsersAction) -> None:
    job = subparsers.add_parser("job", help="write (and submit) PBS/Slurm batch scripts for a stage")
    schedulers = job.add_subparsers(dest="scheduler", metavar="SCHEDULER", required=True)
    for scheduler in jobscript.SCHEDULERS:
        sched = schedulers.add_parser(scheduler, help=f"a {scheduler.upper()} batch script")
        stages = sched.add_subparsers(dest="stage", metavar="STAGE", required=True)
        for stage in jobscript.JOB_STAGES:
            parser = stages.add_parser(
                stage,
                help=STAGE_HELP[stage],
                description=f"{STAGE_HELP[stage]}. Options of the stage itself follow `--`, each shell-quoted.",
            )
            add_config_arguments(parser, JOB_CONFIGS[scheduler])
            parser.set_defaults(func=run_job)
    again = schedulers.add_parser(
        "resubmit", help="(inside a train job) queue the next part; used by scripts made with --resubmit"
    )
    add_config_arguments(again, ResubmitConfig)
    again.set_defaults(func=run_resubmit)


# ---------------------------------------------------------------------------------------------


def run_cluster_show(args: argparse.Namespace) -> int:
    """Print what discovery finds, as JSON."""
    config = load_config(ShowConfig, args)
    env = dict(os.environ)
    if config.port is not None:
        env["HPCVISION_BASE_PORT"] = str(config.port)
    info = describe(config.ps, env, config.source)
    print(json.dumps(info, indent=2))
    return 0


def _stage_args(job: JobConfig) -> list[str]:
    rest = list(job.stage_args)
    if rest and rest[0] == "--":
        return rest[1:]
    if rest:
        raise UserError(f"unexpected {rest[0]!r}: put the stage's own options after `--`")
    return rest


def _pipeline_options(job: JobConfig, stage: str) -> JobConfig:
    """A pipeline stage's options: its own job name; re-queueing, parameter servers, CPU nodes only for train."""
    named = dataclasses.replace(job, job_name=f"{job.job_name}-{stage}" if job.job_name else None)
    if stage == "train":
        return named
    return dataclasses.replace(named, resubmit=False, ps="0", cpu_nodes=0, cpu_node_cores=None, cpu_queue=None)


def job_spec(scheduler: str, stage: str, job: JobConfig, stage_args: list[str], out: Path | None) -> JobSpec:
    """The job of one stage, its own options parsed as the stage will parse them (a typo fails here, not in
    the queue); a sweep's points each parsed with their values."""
    command = jobscript.STAGE_COMMANDS[stage]
    config = parse_stage_options(command, stage, stage_args)
    points = tuple(expand_grid(job.grid)) if stage == "sweep" else ()
    for point in points:
        parse_stage_options(command, stage, [*stage_args, *point.args()])
    training = command == jobscript.STAGE_COMMANDS["train"]
    if training and job.cpu_nodes and config.num_ps:
        raise UserError("--cpu-nodes: the job places the parameter servers (--ps, auto: one per CPU node); "
                        "leave train's --num-ps out")
    return JobSpec(scheduler, stage, job, stage_args, str(out) if out else None,
                   strategy=config.strategy if training else "auto", points=points,
                   sweep_root=config.checkpoint_dir if stage == "sweep" else None,
                   data_service=config.data_service if training else None)


def run_job(args: argparse.Namespace) -> int:
    """Write the batch script(s) for a stage; with --submit, submit them and print the job id(s)."""
    job = load_config(JOB_CONFIGS[args.scheduler], args)
    stage_args = _stage_args(job)
    out = Path(job.out).resolve() if job.out else None
    if args.stage == "pipeline":
        return _run_pipeline(args.scheduler, job, stage_args, out)
    text = jobscript.render(job_spec(args.scheduler, args.stage, job, stage_args, out))
    if out is None:
        if job.submit:
            raise UserError("--submit: give --out FILE so the script that ran is kept")
        sys.stdout.write(text)
        return 0
    _write_script(out, text)
    _make_log_dir(job.log_dir)
    if job.submit:
        from hpcvision.cluster.submit import submit

        print(submit(args.scheduler, out))
    else:
        print(f"wrote {out}; submit with: {'qsub' if args.scheduler == 'pbs' else 'sbatch'} {shlex.quote(str(out))}",
              file=sys.stderr)
    return 0


def _run_pipeline(scheduler: str, job: JobConfig, stage_args: list[str], out: Path | None) -> int:
    if out is None:
        raise UserError("pipeline: give --out FILE (the driver; the four stage scripts are written beside it)")
    per_stage = jobscript.split_pipeline_args(stage_args)
    scripts = {stage: jobscript.stage_script_path(out, stage) for stage in jobscript.STAGES}
    texts = {stage: jobscript.render(job_spec(scheduler, stage, _pipeline_options(job, stage), per_stage[stage],
                                              scripts[stage]))
             for stage in jobscript.STAGES}
    for stage, text in texts.items():
        _write_script(scripts[stage], text)
    _write_script(out, jobscript.render_driver(scheduler, scripts))
    _make_log_dir(job.log_dir)
    if job.submit:
        from hpcvision.cluster.submit import submit_chain

        for stage, job_id in submit_chain(scheduler, [(s, scripts[s]) for s in jobscript.STAGES]):
            print(f"{stage} {job_id}")
    else:
        print(f"wrote {out} and {', '.join(p.name for p in scripts.values())}; submit all four with: "
              f"bash {shlex.quote(str(out))}", file=sys.stderr)
    return 0


def _write_script(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, mode=0o755)
    except OSError as exc:
        raise UserError(f"{path}: cannot write the job script ({exc.strerror})") from None


def _make_log_dir(log_dir: str | None) -> None:
    # Schedulers do not create the output directory; a missing one loses the job's log silently.
    if log_dir:
        try:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--log-dir {log_dir}: cannot create ({exc.strerror})") from None


def run_resubmit(args: argparse.Namespace) -> int:
    """Queue the next part of a training job (called from the job script itself)."""
    from hpcvision.cluster.submit import resubmit

    config = load_config(ResubmitConfig, args)
    return resubmit(config.scheduler, config.script.resolve(), config.max_resubmits)
