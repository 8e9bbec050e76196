"""Subcommands of the train stage (registered by hpcvision.cli): `train`, `launch` and `runs`.

TensorFlow is imported inside the handlers only, so `hpcvision --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcvision.config import add_config_arguments, load_config
from hpcvision.train.config import LaunchConfig, RunsConfig, TrainConfig

TRAIN_EXAMPLE = """example:
  hpcvision train --data records/ --model resnet50 --checkpoint-dir runs/r50 --epochs 90 --batch-size 64
  (run the same command again to resume; SIGTERM/SIGUSR1 or the job's deadline save and exit 0)
  hpcvision train --checkpoint-dir runs/r50   (resumes with the settings its run.yaml records)
  hpcvision train --data flowers/ --model resnet50 --checkpoint-dir runs/ft --init-checkpoint runs/r50 \
      --freeze-backbone                          (fine-tune: weights by layer name, a fresh head)"""

LAUNCH_EXAMPLE = """example:
  hpcvision launch --workers 2 -- --data records/ --model small --checkpoint-dir runs/s --steps 200
  hpcvision launch --workers 2 --ps 1 -- --data records/ --model small --checkpoint-dir runs/ps --steps 200"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` and `launch` to the top-level parser."""
    train = subparsers.add_parser(
        "train", help="train a network (one process, all-reduce or parameter servers)",
        description="Train an image classifier from TFRecord shards; resumes from --checkpoint-dir.",
        epilog=TRAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_train_options(train)
    train.set_defaults(func=run_train)

    launch = subparsers.add_parser(
        "launch", help="run `hpcvision train` as a local cluster of processes on 127.0.0.1",
        description="Start N workers (and M parameter servers plus a chief) on this machine, each with "
        "its TF_CONFIG; prefix their output with their role; stop all if one fails.",
        epilog=LAUNCH_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(launch, LaunchConfig)
    launch.set_defaults(func=run_launch)

    runs = subparsers.add_parser(
        "runs", help="training runs side by side: differing options, step, best validation top-1, img/s",
        description="One row per run folder (a DIR with run.yaml, or every such folder inside DIR, e.g. a "
        "sweep's): the options in which the runs differ, the newest checkpoint's step, the best validation "
        "top-1 (%) and the median training speed, read from what train wrote (no TensorFlow).",
    )
    add_config_arguments(runs, RunsConfig)
    runs.set_defaults(func=run_runs)


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of options (flags override it); e.g. a run's run.yaml")
    add_config_arguments(parser, TrainConfig)


def _checked_train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's options, with every mistake found without TensorFlow refused (a second, not its start-up)."""
    from hpcvision.train.checkpoint import check_same_run
    from hpcvision.train.init_weights import check_source
    from hpcvision.train.inputs import check_before_tensorflow

    # a folder's run.yaml is the base of its resume
    config = load_config(TrainConfig, args, args.config or _run_file(args))
    check_before_tensorflow(config)
    check_same_run(config)  # another run's folder: one line in a second, not after TensorFlow's start
    if config.init_checkpoint:
        check_source(Path(config.init_checkpoint))
    return config


def run_train(args: argparse.Namespace) -> int:
    """Handler of `hpcvision train`."""
    config = _checked_train_config(args)
    from hpcvision.data.pipeline import naming_corrupt_shards
    from hpcvision.train.inputs import val_dir
    from hpcvision.train.loop import train

    data = None if config.synthetic else config.data
    with naming_corrupt_shards((data, config.train_name), (data and val_dir(config), config.val_name)):
        return train(config)


def _run_file(args: argparse.Namespace) -> Path | None:
    """--checkpoint-dir's run.yaml when it has one: `train --checkpoint-dir X` alone resumes X as it ran."""
    from hpcvision.train.checkpoint import RUN_FILE

    folder = getattr(args, "checkpoint_dir", None)
    path = Path(folder) / RUN_FILE if folder else None
    return path if path is not None and path.is_file() else None


def run_launch(args: argparse.Namespace) -> int:
    """Handler of `hpcvision launch`."""
    from hpcvision.cluster.launch import launch_local

    config = load_config(LaunchConfig, args)
    train_args = list(config.train_args)
    if train_args[:1] == ["--"]:  # argparse keeps the separator in a REMAINDER
        train_args = train_args[1:]
    # The workers' options checked here, once, before any of them starts TensorFlow.
    train_parser = argparse.ArgumentParser(prog="hpcvision train")
    _add_train_options(train_parser)
    _checked_train_config(train_parser.parse_args(train_args))
    return launch_local(train_args, workers=config.workers, ps=config.ps, threads=config.threads,
                        grace_s=config.grace)


def run_runs(args: argparse.Namespace) -> int:
    """Handler of `hpcvision runs`."""
    import sys

    from hpcvision.train.runs import show_runs

    config = load_config(RunsConfig, args)
    sys.stdout.write(show_runs(config.dirs, as_csv=config.csv))
    return 0
