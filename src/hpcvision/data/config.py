"""`SampleConfig`, `ExtractConfig`, `BuildConfig`, `VerifyConfig`: the options of the data commands, declared once.

Their `--flags` are derived from the fields (`hpcvision.config.add_config_arguments`); a field
without a default is a required option. Paths are kept as given on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcvision.config import option, required

INDEX_FOLDER = ".hpcvision-index"  # under OUT, unless --index-dir says otherwise
# Where Debian's dataset-fashion-mnist installs the four IDX files. Owned here, not by the NumPy
# reader (data.fashion_mnist), so building the `data sample` parser imports no NumPy.
DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_SOURCES = ("fashion-mnist", "synthetic")


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
        "Images.tar or ILSVRC2012_img_train.tar (tar of <wnid>.tar), ILSVRC2012_img_val.tar (flat; needs "
        "--val-labels), or a folder <wnid>/<name>.JPEG", metavar="ARCHIVE")
    list_file: Path = required("images to extract, one '<wnid> <name>' a line (the course's list format)",
                               flag="--list", metavar="FILE")
    out: Path = required("output folder", metavar="DIR")
    annotations: Path | None = option(
        None, "Annotation.tar.gz (tar of <wnid>.tar.gz) or a folder <wnid>/<name>.xml (default: none)",
        metavar="ARCHIVE")
    synsets: Path | None = option(None, "synsets.txt: list lines of other synsets are skipped as unknown "
                                  "(default: every synset is known)", metavar="FILE")
    val_labels: Path | None = option(
        None, "labels of a flat validation tar: '<filename> <wnid>' a line, or one wnid a line in image order "
        "(default: none)", metavar="FILE")
    workers: int = option(1, "local processes", metavar="N", minimum=1)
    rank: int | None = option(None, "this process's rank (default: from mpirun/srun/PBS environment, else 0)",
                              metavar="I", minimum=0)
    ranks: int | None = option(None, "number of ranks sharing the list (default: from the environment, else 1)",
                               metavar="N", minimum=1)
    index_dir: Path | None = option(None, f"where the archive index is cached (default: OUT/{INDEX_FOLDER})",
                                    metavar="DIR")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `data build` needs."""

    images: Path = required(
        "DIR/<wnid>/<name>.JPEG, Images.tar / ILSVRC2012_img_train.tar, or ILSVRC2012_img_val.tar",
        metavar="DIR|TAR")
    file_list: Path = required("images to write, '<wnid> <wnid>_<n>' a line", flag="--list", metavar="FILE")
    synsets: Path = required("one wnid a line, in label order", metavar="FILE")
    out: Path = required("output folder", metavar="DIR")
    annotations: Path | None = option(
        None, "DIR/<wnid>/<name>.xml or Annotation.tar.gz (default: none, so no boxes)", metavar="DIR|TAR")
    val_labels: Path | None = option(None, "'<filename> <wnid>' lines, for the flat ILSVRC2012_img_val.tar",
                                     metavar="FILE")
    metadata: Path | None = option(None, "'<wnid>\\t<words>' lines for image/class/text (default: the wnid)",
                                   metavar="FILE")
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


@dataclass(frozen=True)
class VerifyConfig:
    """Everything `data verify` needs."""

    folder: Path = required("folder with the shards and <name>-manifest.json", positional=True, metavar="DIR")
    name: str = option("train", "shard name prefix")
    decode: bool = option(False, "also decode every JPEG, slow (default: header check only)")
