"""Subcommands of the data stage (registered by hpcvision.cli): sample, extract, build, verify.

Handlers import their modules lazily so `hpcvision --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `hpcvision data {sample,extract,build,verify}` to the top-level parser."""
    data = subparsers.add_parser(
        "data", help="make a sample, extract archives, build and verify TFRecords",
        description="Step 1-2 of the workflow: ImageNet-style archives to sharded TFRecords.")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    _add_sample(commands)
    _add_extract(commands)
    _add_build(commands)
    _add_verify(commands)


def _add_extract(commands: argparse._SubParsersAction) -> None:
    from hpcvision.data.extract import add_extract_parser

    add_extract_parser(commands)


# --- sample ----------------------------------------------------------------------------------------

def _add_sample(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sample", help="write a small real-image ImageNet (Fashion-MNIST as 10 synsets) in archive layout",
        description="Write OUT/Images.tar, OUT/Annotation.tar.gz, synsets.txt, metadata.txt, "
        "train_files.txt and validation_files.txt from Fashion-MNIST (or synthetic shapes).")
    p.add_argument("out", type=Path, metavar="OUT", help="output folder")
    p.add_argument("--source", choices=("fashion-mnist", "synthetic"), default="fashion-mnist",
                   help="real Fashion-MNIST images, or procedurally drawn shapes (default: fashion-mnist)")
    p.add_argument("--fashion-mnist", type=Path, default=None, metavar="DIR",
                   help="folder with the four Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="images per class from each split (default: all of Fashion-MNIST, 6000 train + "
                   "1000 validation; 100 + 100 for synthetic)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels, >= 64 (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="which images --per-class picks; synthetic drawing (default: 0)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    import time

    from hpcvision.data.sample import DEFAULT_FASHION_MNIST, SampleConfig, make_sample

    start = time.monotonic()
    config = SampleConfig(out=args.out, source=args.source, fashion_mnist=args.fashion_mnist or DEFAULT_FASHION_MNIST,
                          per_class=args.per_class, size=args.size, seed=args.seed, workers=args.workers)
    counts = make_sample(config)
    print(f"wrote {counts['train']} train + {counts['validation']} validation images ({args.source}, "
          f"{args.size}px) to {args.out}/ in {time.monotonic() - start:.1f} s:")
    for name in ("Images.tar", "Annotation.tar.gz", "synsets.txt", "metadata.txt", "train_files.txt",
                 "validation_files.txt"):
        print(f"  {args.out / name}")
    return 0


# --- build -----------------------------------------------------------------------------------------

def _add_build(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "build", help="write sharded TFRecords (inception schema) from a DIR or Images.tar",
        description="Write OUT/<name>-%%05d-of-%%05d TFRecord shards of tf.train.Example (the keys of "
        "inception's build_imagenet_data.py), OUT/<name>-manifest.json and OUT/<name>-skipped.tsv. "
        "Reruns skip shards already complete.")
    p.add_argument("--images", type=Path, required=True, metavar="DIR|TAR",
                   help="DIR/<wnid>/<name>.JPEG, Images.tar / ILSVRC2012_img_train.tar, or ILSVRC2012_img_val.tar")
    p.add_argument("--annotations", type=Path, default=None, metavar="DIR|TAR",
                   help="DIR/<wnid>/<name>.xml or Annotation.tar.gz (optional: without it, no boxes)")
    p.add_argument("--val-labels", type=Path, default=None, metavar="FILE",
                   help="'<filename> <wnid>' lines, for the flat ILSVRC2012_img_val.tar")
    p.add_argument("--list", type=Path, required=True, dest="file_list", metavar="FILE",
                   help="images to write, '<wnid> <wnid>_<n>' a line")
    p.add_argument("--synsets", type=Path, required=True, metavar="FILE", help="one wnid a line, in label order")
    p.add_argument("--metadata", type=Path, default=None, metavar="FILE",
                   help="'<wnid>\\t<words>' lines for image/class/text (default: the wnid)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--name", default="train", help="shard name prefix (default: train)")
    p.add_argument("--shards", type=int, default=8, help="number of shards (default: 8)")
    p.add_argument("--label-offset", type=int, default=1, choices=(0, 1),
                   help="stored label = synset index + offset; 1 keeps 0 for background as inception (default: 1)")
    p.add_argument("--seed", type=int, default=12345, help="shuffle seed; same seed, same shards (default: 12345)")
    p.add_argument("--workers", type=int, default=1, help="writer processes on this machine (default: 1)")
    p.add_argument("--rank", type=int, default=None,
                   help="this rank's index (default: from mpirun/srun environment, else 0)")
    p.add_argument("--ranks", type=int, default=None, help="number of ranks (default: from the environment, else 1)")
    p.add_argument("--index-dir", type=Path, default=None, metavar="DIR",
                   help="where archive indexes are cached (default: OUT/.hpcvision-index)")
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="with several ranks, how long rank 0 waits for the others before writing "
                   "the manifest (default: 600)")
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from hpcvision.data.build import BuildConfig, build

    config = BuildConfig(
        images=args.images, annotations=args.annotations, val_labels=args.val_labels,
        file_list=args.file_list, synsets=args.synsets, metadata=args.metadata, out=args.out,
        name=args.name, shards=args.shards, label_offset=args.label_offset, seed=args.seed,
        workers=args.workers, rank=args.rank, ranks=args.ranks, index_dir=args.index_dir, wait=args.wait)
    return build(config)


# --- verify ----------------------------------------------------------------------------------------

def _add_verify(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "verify", help="check every shard: record CRCs, Example parsing, counts against the manifest",
        description="Read every record of DIR/<name>-*: framing and CRCs, the Example schema, labels "
        "against the manifest's label map, and the counts. Exits 2 naming shard and record on corruption.")
    p.add_argument("dir", type=Path, metavar="DIR", help="folder with the shards and <name>-manifest.json")
    p.add_argument("--name", default="train", help="shard name prefix (default: train)")
    p.add_argument("--decode", action="store_true", help="also decode every JPEG (slow; default: header check)")
    p.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from hpcvision.data.verify import verify

    return verify(args.dir, args.name, decode=args.decode)
