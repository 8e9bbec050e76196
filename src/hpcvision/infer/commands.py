"""Subcommands that use a trained model: evaluate, export, predict, features, tensorboard (registered by hpcvision.cli).

Options are declared in `hpcvision.infer.config`; TensorFlow is imported inside the handlers only,
so `hpcvision --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from hpcvision.config import add_config_arguments, load_config
from hpcvision.errors import UserError
from hpcvision.infer.config import (
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
    config = load_config(EvaluateConfig, args)  # options checked before TensorFlow is imported
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
    config = load_config(ExportConfig, args)  # options checked before TensorFlow is imported
    from hpcvision.infer.export import export_model

    info = export_model(config.checkpoint_dir, config.out)
    print(f"exported {info['model']} (step {info['step']}) to {config.out}: SavedModel, model.keras, labels.json")
    print(f"try: hpcvision predict --model-path {config.out} IMAGE.JPEG")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Handler of `hpcvision predict`: exit 1 if any image could not be predicted."""
    config = load_config(PredictConfig, args)  # options checked before TensorFlow is imported
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
    config = load_config(FeaturesConfig, args)  # options checked before TensorFlow is imported
    from hpcvision.infer.features import write_features

    classifier = _load(config)
    written, skipped = write_features(classifier, config.image_dir, config.out, batch_size=config.batch_size)
    txt = Path(config.out).with_suffix(".txt")
    print(f"wrote {written} embeddings to {config.out} (names in {txt}); {len(skipped)} skipped")
    for _path, why in skipped:
        print(f"  skipped {why}", file=sys.stderr)
    return 0


def run_tensorboard(args: argparse.Namespace) -> int:
    """Handler of `hpcvision tensorboard`: serves until interrupted."""
    from hpcvision.cluster.launch import free_ports

    try:
        from tensorboard import program
    except ImportError:
        raise UserError("TensorBoard is not installed (pip install tensorboard)") from None
    config = load_config(TensorBoardConfig, args)
    logdir = Path(config.logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: not a directory")
    board = program.TensorBoard()
    # Loopback only: a login node is shared; reach it with `ssh -L PORT:127.0.0.1:PORT host`.
    board.configure(logdir=str(logdir), host="127.0.0.1", port=config.port or free_ports(1)[0])
    try:
        url = board.launch()
    except program.TensorBoardPortInUseError as exc:
        raise UserError(f"port {config.port}: {exc}") from None
    print(f"TensorBoard at {url} (logdir {logdir}); Ctrl-C stops it", flush=True)
    threading.Event().wait()  # serve until interrupted (cli turns Ctrl-C into exit code 130)
    return 0
