"""The options of `evaluate`, `export`, `predict`, `features` and `tensorboard`, declared once.

Their `--flags` are derived from the fields (`hpcvision.config.add_config_arguments`); a field
without a default is a required option. No TensorFlow here, so building the parser stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcvision.config import option, required

EXPORT_INFO = "export.json"  # what `hpcvision export` writes into its folder; a folder without it is no export


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where a trained model comes from: a training directory or an export, exactly one."""

    checkpoint_dir: str | None = option(None, "training directory (newest usable checkpoint, run.yaml)",
                                        one_of="model")
    model_path: str | None = option(None, "directory written by `hpcvision export`", one_of="model")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(ModelSource):
    """Everything `evaluate` needs."""

    data: str = required("directory with the shards and NAME-manifest.json")
    name: str = option("validation", "split name")
    out: str = required("directory for metrics.json and the confusion matrix")
    batch_size: int = option(64, "", minimum=1)


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """Everything `export` needs."""

    checkpoint_dir: str = required("training directory")
    out: str = required("export directory (created)")


@dataclass(frozen=True, kw_only=True)
class PredictConfig(ModelSource):
    """Everything `predict` needs."""

    images: tuple[str, ...] = required("JPEG/PNG files", positional=True, metavar="IMAGE")
    top: int = option(5, "classes to print per image", minimum=1)


@dataclass(frozen=True, kw_only=True)
class FeaturesConfig(ModelSource):
    """Everything `features` needs."""

    image_dir: str = required("folder of JPEG/PNG files (not recursive)", positional=True, metavar="IMAGE_DIR")
    out: str = required("output .npy; file names go to the same name with .txt")
    batch_size: int = option(64, "", minimum=1)


@dataclass(frozen=True, kw_only=True)
class TensorBoardConfig:
    """Everything `tensorboard` needs."""

    logdir: str = required("a checkpoint directory (or its logs/ folder)", positional=True, metavar="DIR")
    port: int = option(6006, "0 = any free port", minimum=0, maximum=65535)
