"""Subcommands that use a trained model: evaluate, export, predict, features, tensorboard (registered by hpcvision.cli).

TensorFlow is imported inside the handlers only, so `hpcvision --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from hpcvision.errors import UserError

log = logging.getLogger(__name__)


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint-dir", help="training directory (newest usable checkpoint, run.yaml)")
    source.add_argument("--model-path", help="directory written by `hpcvision export`")


def _load(args: argparse.Namespace):
    from hpcvision.infer.predict import load_classifier

    return load_classifier(args.checkpoint_dir, args.model_path)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the top-level parser."""
    p = subparsers.add_parser(
        "evaluate", help="top-1/top-5, per-class accuracy and confusion matrix on a split",
        description="Evaluate a checkpoint or an export on every record of DATA/NAME-*; writes "
        "OUT/metrics.json, OUT/confusion_matrix.png/.npy and (with --checkpoint-dir) TensorBoard "
        "scalars in CHECKPOINT_DIR/logs/eval.",
    )
    _add_model_source(p)
    p.add_argument("--data", required=True, help="directory with the shards and NAME-manifest.json")
    p.add_argument("--name", default="validation", help="split name (default: validation)")
    p.add_argument("--out", required=True, help="directory for metrics.json and the confusion matrix")
    p.add_argument("--batch-size", type=int, default=64, help="default: 64")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "export", help="SavedModel (JPEG bytes or pixels -> top-5) + model.keras + labels.json",
        description="Export the newest usable checkpoint of a run (also a run killed mid-step).",
    )
    p.add_argument("--checkpoint-dir", required=True, help="training directory")
    p.add_argument("--out", required=True, help="export directory (created)")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser("predict", help="top-5 classes (wnid and name) of image files")
    _add_model_source(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG files")
    p.add_argument("--top", type=int, default=5, help="classes to print per image (default: 5)")
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser(
        "features", help="penultimate-layer embeddings of a folder of images (.npy + .txt of names)"
    )
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="folder of JPEG/PNG files (not recursive)")
    p.add_argument("--out", required=True, help="output .npy; file names go to the same name with .txt")
    _add_model_source(p)
    p.add_argument("--batch-size", type=int, default=64, help="default: 64")
    p.set_defaults(func=run_features)

    p = subparsers.add_parser("tensorboard", help="start TensorBoard on 127.0.0.1 and print its URL")
    p.add_argument("logdir", metavar="DIR", help="a checkpoint directory (or its logs/ folder)")
    p.add_argument("--port", type=int, default=6006, help="default: 6006; 0 = any free port")
    p.set_defaults(func=run_tensorboard)


def run_evaluate(args: argparse.Namespace) -> int:
    from hpcvision.infer.evaluate import evaluate

    classifier = _load(args)
    log_dir = Path(args.checkpoint_dir) / "logs" / "eval" if args.checkpoint_dir else None
    metrics = evaluate(classifier, args.data, args.name, args.out, batch_size=args.batch_size, log_dir=log_dir)
    print(
        f"{args.name}: top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
        f"({metrics['num_examples']} images, step {metrics['checkpoint_step']})"
    )
    print(f"wrote {Path(args.out) / 'metrics.json'} and confusion_matrix.png")
    if log_dir is not None:
        print(f"TensorBoard scalars in {log_dir}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from hpcvision.infer.export import export_model

    info = export_model(args.checkpoint_dir, args.out)
    print(f"exported {info['model']} (step {info['step']}) to {args.out}: SavedModel, model.keras, labels.json")
    print(f"try: hpcvision predict --model-path {args.out} IMAGE.JPEG")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from hpcvision.infer.predict import format_prediction, predict_files

    classifier = _load(args)
    failed = 0
    for path, top, error in predict_files(classifier, args.images, args.top):
        if error:
            failed += 1
            print(f"hpcvision: error: {error}", file=sys.stderr)
            continue
        print(format_prediction(path, top), flush=True)
    if failed:
        print(f"hpcvision: {failed} of {len(args.images)} images could not be predicted", file=sys.stderr)
    return 1 if failed else 0


def run_features(args: argparse.Namespace) -> int:
    from hpcvision.infer.features import write_features

    classifier = _load(args)
    written, skipped = write_features(classifier, args.image_dir, args.out, batch_size=args.batch_size)
    txt = Path(args.out).with_suffix(".txt")
    print(f"wrote {written} embeddings to {args.out} (names in {txt}); {len(skipped)} skipped")
    for _path, why in skipped:
        print(f"  skipped {why}", file=sys.stderr)
    return 0


def run_tensorboard(args: argparse.Namespace) -> int:
    from hpcvision.cluster.launch import free_ports

    try:
        from tensorboard import program
    except ImportError:
        raise UserError("TensorBoard is not installed (pip install tensorboard)") from None
    logdir = Path(args.logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: not a directory")
    board = program.TensorBoard()
    # Loopback only: a login node is shared; reach it with `ssh -L PORT:127.0.0.1:PORT host`.
    board.configure(logdir=str(logdir), host="127.0.0.1", port=args.port or free_ports(1)[0])
    try:
        url = board.launch()
    except program.TensorBoardPortInUseError as exc:
        raise UserError(f"port {args.port}: {exc}") from None
    print(f"TensorBoard at {url} (logdir {logdir}); Ctrl-C stops it", flush=True)
    threading.Event().wait()  # serve until interrupted (cli turns Ctrl-C into exit code 130)
    return 0
