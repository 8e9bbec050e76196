"""Subcommands of the cluster stage: `cluster show`, `job pbs|slurm STAGE`, `job resubmit`.

No TensorFlow import on these paths: they run on login nodes and at the top of every batch job.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from hpcvision.cluster import discovery, jobscript
from hpcvision.cluster.plan import describe
from hpcvision.errors import UserError
from hpcvision.files import write_atomic

STAGE_HELP = {
    "extract": "hpcvision data extract on every task (ranks split the image list)",
    "build": "hpcvision data build on every task (ranks write disjoint shards)",
    "train": "hpcvision train on every task (roles from discovery; --ps for parameter servers)",
    "evaluate": "hpcvision evaluate, one process",
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
    show.add_argument("--ps", type=int, default=0, help="parameter-server tasks (placed on GPU-less hosts first)")
    show.add_argument("--port", type=int, help="base port (default $HPCVISION_BASE_PORT, else from the job id)")
    show.add_argument("--source", choices=discovery.SOURCES, help="force one source (default $HPCVISION_DISCOVERY or auto)")
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
            _add_job_options(parser, scheduler)
            parser.set_defaults(func=run_job)
    again = schedulers.add_parser(
        "resubmit", help="(inside a train job) queue the next part; used by scripts made with --resubmit"
    )
    again.add_argument("resubmit_scheduler", choices=jobscript.SCHEDULERS, metavar="{pbs,slurm}")
    again.add_argument("script", help="the job script to submit again")
    again.add_argument("--max-resubmits", type=int, default=5)
    again.set_defaults(func=run_resubmit)


def _add_job_options(parser: argparse.ArgumentParser, scheduler: str) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--tasks-per-node", type=int, default=1,
                        help="processes per node: 1 per node, or one per GPU (default 1)")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per process")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0)")
    parser.add_argument("--walltime", help="HH:MM:SS; train checkpoints and stops a margin before it")
    parser.add_argument("--queue", "--partition", dest="queue", help="queue (PBS) / partition (Slurm)")
    parser.add_argument("--account", help="account/project to charge")
    parser.add_argument("--job-name", help="job name (letters, digits, _ . -; default hpcvision-STAGE)")
    parser.add_argument("--setup", action="append", default=[], metavar="LINE",
                        help="shell line run before the stage, verbatim (module load, source venv); repeatable")
    parser.add_argument("--log-dir", help="directory for the job's output file")
    launchers = ("auto", "srun", "mpirun") if scheduler == "slurm" else ("auto", "mpirun", "aprun")
    parser.add_argument("--launcher", choices=launchers, default="auto",
                        help="how ranks start (default: srun on Slurm, mpirun on PBS; aprun on Cray)")
    parser.add_argument("--ps", type=int, default=0, help="train: parameter-server tasks (default 0: all-reduce)")
    parser.add_argument("--port", type=int, help="base port of the TF servers on each host")
    parser.add_argument("--out", help="write the script here (pipeline: the driver; stage scripts beside it)")
    parser.add_argument("--submit", action="store_true", help="submit with qsub/sbatch and print the job id(s)")
    parser.add_argument("--resubmit", action="store_true",
                        help=f"train: when train exits {jobscript.EXIT_MORE_TO_DO} (walltime reached, more to do), "
                        "queue the job again")
    parser.add_argument("--max-resubmits", type=int, default=5, help="bound on --resubmit (default 5)")
    parser.add_argument("stage_args", nargs=argparse.REMAINDER, help="-- then the stage's own options")


# ---------------------------------------------------------------------------------------------


def run_cluster_show(args: argparse.Namespace) -> int:
    """Print what discovery finds, as JSON."""
    env = dict(os.environ)
    if args.port is not None:
        env["HPCVISION_BASE_PORT"] = str(args.port)
    info = describe(args.ps, env, args.source)
    print(json.dumps(info, indent=2))
    return 0


def _stage_args(args: argparse.Namespace) -> list[str]:
    rest = list(args.stage_args)
    if rest and rest[0] == "--":
        return rest[1:]
    if rest:
        raise UserError(f"unexpected {rest[0]!r}: put the stage's own options after `--`")
    return rest


def _spec(args: argparse.Namespace, stage: str, stage_args: list[str], script: Path | None) -> jobscript.JobSpec:
    return jobscript.JobSpec(
        scheduler=args.scheduler, stage=stage, stage_args=stage_args, nodes=args.nodes,
        tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task,
        gpus_per_node=args.gpus_per_node, walltime=args.walltime, queue=args.queue,
        account=args.account, job_name=_stage_job_name(args, stage), setup=args.setup,
        log_dir=args.log_dir, launcher=args.launcher, resubmit=args.resubmit and (args.stage != "pipeline" or stage == "train"),
        max_resubmits=args.max_resubmits, num_ps=args.ps if args.stage != "pipeline" or stage == "train" else 0, port=args.port,
        script_path=str(script) if script else None,
    )


def _stage_job_name(args: argparse.Namespace, stage: str) -> str | None:
    if args.stage != "pipeline":
        return args.job_name
    return f"{args.job_name}-{stage}" if args.job_name else None


def run_job(args: argparse.Namespace) -> int:
    """Write the batch script(s) for a stage; with --submit, submit them and print the job id(s)."""
    stage_args = _stage_args(args)
    out = Path(args.out).resolve() if args.out else None
    if args.stage == "pipeline":
        return _run_pipeline(args, stage_args, out)
    spec = _spec(args, args.stage, stage_args, out)
    text = jobscript.render(spec)
    if out is None:
        if args.submit:
            raise UserError("--submit: give --out FILE so the script that ran is kept")
        sys.stdout.write(text)
        return 0
    _write_script(out, text)
    _make_log_dir(args.log_dir)
    if args.submit:
        from hpcvision.cluster.submit import submit

        print(submit(args.scheduler, out))
    else:
        print(f"wrote {out}; submit with: {'qsub' if args.scheduler == 'pbs' else 'sbatch'} {shlex.quote(str(out))}",
              file=sys.stderr)
    return 0


def _run_pipeline(args: argparse.Namespace, stage_args: list[str], out: Path | None) -> int:
    if out is None:
        raise UserError("pipeline: give --out FILE (the driver; the four stage scripts are written beside it)")
    per_stage = jobscript.split_pipeline_args(stage_args)
    scripts = {stage: jobscript.stage_script_path(out, stage) for stage in jobscript.STAGES}
    texts = {stage: jobscript.render(_spec(args, stage, per_stage[stage], scripts[stage]))
             for stage in jobscript.STAGES}
    for stage, text in texts.items():
        _write_script(scripts[stage], text)
    _write_script(out, jobscript.render_driver(args.scheduler, scripts))
    _make_log_dir(args.log_dir)
    if args.submit:
        from hpcvision.cluster.submit import submit_chain

        for stage, job_id in submit_chain(args.scheduler, [(s, scripts[s]) for s in jobscript.STAGES]):
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

    return resubmit(args.resubmit_scheduler, Path(args.script).resolve(), args.max_resubmits)
