"""Subcommands that use a trained model: evaluate, export, predict, features, tensorboard (registered by hpcvision.cli).

Options are declared in `hpcvision.infer.config`; TensorFlow is imported inside the handlers only,
so `hpcvision --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import threading
from pathlib import Path

from hpcvision.config import add_config_arguments, load_config
from hpcvision.errors import UserError
from hpcvision.infer.config import (
    EXPORT_INFO,
    EvaluateConfig,
    ExportConfig,
    FeaturesConfig,
    ModelSource,
    PredictConfig,
    TensorBoardConfig,
)

log = logging.getLogger(__name__)


def _load(source: ModelSource):
    from hpcvision.infer.predict import load_classifier

    return load_classifier(source.checkpoint_dir, source.model_path)


def _check_source(source: ModelSource) -> None:
    """A --checkpoint-dir without run.yaml or a --model-path without export.json, refused before TensorFlow starts."""
    from hpcvision.train.checkpoint import load_run_config

    if source.checkpoint_dir is not None:
        load_run_config(source.checkpoint_dir)
    elif not (Path(source.model_path) / EXPORT_INFO).is_file():
        raise UserError(f"{source.model_path}: not an hpcvision export (no {EXPORT_INFO})")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the top-level parser."""
    p = subparsers.add_parser(
        "evaluate", help="top-1/top-5, per-class accuracy and confusion matrix on a split",
        description="Evaluate a checkpoint or an export on every record of DATA/NAME-*; writes "
        "OUT/metrics.json, OUT/confusion_matrix.png/.npy and (with --checkpoint-dir) TensorBoard "
        "scalars in CHECKPOINT_DIR/logs/eval.",
    )
    add_config_arguments(p, EvaluateConfig)
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "export", help="SavedModel (JPEG bytes or pixels -> top-5) + model.keras + labels.json",
        description="Export the newest usable checkpoint of a run (also a run killed mid-step).",
    )
    add_config_arguments(p, ExportConfig)
    p.set_defaults(func=run_export)

    p = subparsers.add_parser("predict", help="top-5 classes (wnid and name) of image files")
    add_config_arguments(p, PredictConfig)
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser(
        "features", help="penultimate-layer embeddings of a folder of images (.npy + .txt of names)"
    )
    add_config_arguments(p, FeaturesConfig)
    p.set_defaults(func=run_features)

    p = subparsers.add_parser("tensorboard", help="start TensorBoard on 127.0.0.1 and print its URL")
    add_config_arguments(p, TensorBoardConfig)
    p.set_defaults(func=run_tensorboard)


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of `hpcvision evaluate`."""
    config = load_config(EvaluateConfig, args)  # options, model and split checked before TensorFlow is imported
    from hpcvision.data.shards import read_manifest

    _check_source(config)
    read_manifest(config.data, config.name)
    from hpcvision.data.pipeline import naming_corrupt_shards
    from hpcvision.infer.evaluate import evaluate

    classifier = _load(config)
    log_dir = Path(config.checkpoint_dir) / "logs" / "eval" if config.checkpoint_dir else None
    with naming_corrupt_shards((config.data, config.name)):
        metrics = evaluate(classifier, config.data, config.name, config.out, batch_size=config.batch_size,
                           log_dir=log_dir)
    skipped = f", {metrics['skipped_records']} skipped" if metrics["skipped_records"] else ""
    print(
        f"{config.name}: top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
        f"({metrics['num_examples']} images{skipped}, step {metrics['checkpoint_step']})"
    )
    print(f"wrote {Path(config.out) / 'metrics.json'} and confusion_matrix.png")
    if log_dir is not None:
        print(f"TensorBoard scalars in {log_dir}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Handler of `hpcvision export`."""
    config = load_config(ExportConfig, args)  # options and run.yaml checked before TensorFlow is imported
    from hpcvision.train.checkpoint import load_run_config

    load_run_config(config.checkpoint_dir)
    from hpcvision.infer.export import export_model

    info = export_model(config.checkpoint_dir, config.out)
    print(f"exported {info['model']} (step {info['step']}) to {config.out}: SavedModel, model.keras, labels.json")
    print(f"try: hpcvision predict --model-path {config.out} IMAGE.JPEG")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Handler of `hpcvision predict`: exit 1 if any image could not be predicted."""
    config = load_config(PredictConfig, args)  # options and model checked before TensorFlow is imported
    _check_source(config)
    from hpcvision.infer.predict import format_prediction, predict_files

    classifier = _load(config)
    failed = 0
    for path, top, error in predict_files(classifier, config.images, config.top):
        if error:
            failed += 1
            print(f"hpcvision: error: {error}", file=sys.stderr)
            continue
        print(format_prediction(path, top), flush=True)
    if failed:
        print(f"hpcvision: {failed} of {len(config.images)} images could not be predicted", file=sys.stderr)
    return 1 if failed else 0


def run_features(args: argparse.Namespace) -> int:
    """Handler of `hpcvision features`."""
    config = load_config(FeaturesConfig, args)  # options, model and folder checked before TensorFlow is imported
    _check_source(config)
    if not Path(config.image_dir).is_dir():
        raise UserError(f"{config.image_dir}: not a directory")
    from hpcvision.infer.features import write_features

    classifier = _load(config)
    written, skipped = write_features(classifier, config.image_dir, config.out, batch_size=config.batch_size)
    txt = Path(config.out).with_suffix(".txt")
    print(f"wrote {written} embeddings to {config.out} (names in {txt}); {len(skipped)} skipped")
    for _path, why in skipped:
        print(f"  skipped {why}", file=sys.stderr)
    return 0


def run_tensorboard(args: argparse.Namespace) -> int:
    """Handler of `hpcvision tensorboard`: prints the URL, then serves until interrupted."""
    from hpcvision.cluster.launch import free_ports

    config = load_config(TensorBoardConfig, args)
    logdir = Path(config.logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: not a directory")
    if not args.verbose:
        # TensorBoard's loggers (its data server's start-up, one werkzeug line per HTTP request) inherit the
        # root logger's level; -v shows them.
        logging.getLogger().setLevel(logging.WARNING)
    try:
        from tensorboard import program
    except ImportError:
        raise UserError("TensorBoard is not installed (pip install tensorboard)") from None
    board = program.TensorBoard()
    # Loopback only: a login node is shared; reach it with `ssh -L PORT:127.0.0.1:PORT host`.
    board.configure(logdir=str(logdir), host="127.0.0.1", port=config.port or free_ports(1)[0])
    said = io.StringIO()  # what launch() prints itself: its fast-loading advisory goes after the URL, with -v
    try:
        with contextlib.redirect_stderr(said):
            url = board.launch()
    except program.TensorBoardPortInUseError as exc:
        raise UserError(f"port {config.port}: {exc}") from None
    finally:
        said = said.getvalue()
    print(f"TensorBoard at {url} (logdir {logdir}); Ctrl-C stops it", flush=True)
    if said and (args.verbose or "fast data loading" not in said):
        sys.stderr.write(said)
    threading.Event().wait()  # serve until interrupted (cli turns Ctrl-C into exit code 130)
    return 0
