"""`hpcvision runs DIR...`: training runs side by side, from what `train` leaves in its checkpoint folder.

A row per run: the options in which the runs differ (from each run.yaml), the step of the newest checkpoint
(its `ckpt-N.index`), the best validation top-1 (`logs/eval`'s `top1` scalars) and the training
speed (median of `logs/train`'s `images_per_sec/global`). The TensorBoard event files are TFRecord-framed
`Event` protos, read with our framing reader and TensorBoard's protos, so no TensorFlow is imported.
A DIR is a run folder (it holds run.yaml) or a folder of them, such as a sweep's `--checkpoint-dir`.
"""

from __future__ import annotations

import csv
import io
import statistics
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcvision.config import read_yaml
from hpcvision.data.records import CorruptRecord, read_records
from hpcvision.errors import UserError
from hpcvision.train.checkpoint import RUN_FILE, checkpoint_prefixes

# Options that differ from run to run without saying anything about the run.
NOT_COMPARED = ("checkpoint_dir", "deadline")
# TensorProto dtypes of the scalars tf.summary.scalar writes (float32, float64) and how they are packed.
_PACKED = {1: "<f", 2: "<d"}


@dataclass(frozen=True)
class RunSummary:
    """What one run folder says about itself."""

    folder: Path
    options: dict[str, Any]
    step: int | None
    best_top1: float | None
    images_per_s: float | None


def find_runs(folders: list[str] | tuple[str, ...]) -> list[Path]:
    """Run folders: each DIR that holds run.yaml, else its subfolders that do; UserError for a DIR with neither."""
    runs: list[Path] = []
    for text in folders:
        folder = Path(text)
        if (folder / RUN_FILE).is_file():
            runs.append(folder)
            continue
        inside = sorted(p.parent for p in folder.glob(f"*/{RUN_FILE}")) if folder.is_dir() else []
        if not inside:
            raise UserError(f"{folder}: no {RUN_FILE} in it or in its subfolders (not a training run)")
        runs += inside
    return runs


def summarize(folder: Path) -> RunSummary:
    """The options, newest checkpoint step, best validation top-1 and median img/s of one run folder."""
    return RunSummary(folder, _options(folder), _step(folder),
                      max((value for _, value in scalars(folder / "logs" / "eval", "top1")), default=None),
                      _median([value for _, value in scalars(folder / "logs" / "train", "images_per_sec/global")]))


def _options(folder: Path) -> dict[str, Any]:
    """run.yaml as flat option: value (a section's options by their own names, as their flags are)."""
    data = read_yaml(folder / RUN_FILE)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _step(folder: Path) -> int | None:
    """The step of the newest checkpoint on disk: the one a restart resumes from (`restore_newest`)."""
    prefixes = checkpoint_prefixes(folder)
    return int(prefixes[0].rsplit("-", 1)[1]) if prefixes else None


def scalars(log_dir: Path, tag: str) -> Iterator[tuple[int, float]]:
    """(step, value) of every `tag` scalar in the event files of `log_dir`, oldest file first."""
    from tensorboard.compat.proto import event_pb2  # protobuf only: no TensorFlow

    for path in sorted(log_dir.glob("events.out.tfevents.*")) if log_dir.is_dir() else []:
        try:
            for record in read_records(path):
                event = event_pb2.Event.FromString(record)
                for value in event.summary.value:
                    number = _scalar(value) if value.tag == tag else None
                    if number is not None:
                        yield event.step, number
        except CorruptRecord:
            continue  # a file being written ends in a partial record: what came before it counts
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def _scalar(value) -> float | None:
    """The number of a scalar summary: TF 2 writes a float tensor, TF 1 a simple_value."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    tensor = value.tensor
    for values in (tensor.float_val, tensor.double_val):
        if len(values) == 1:
            return float(values[0])
    packing = _PACKED.get(tensor.dtype)
    if packing and len(tensor.tensor_content) == struct.calcsize(packing):
        return float(struct.unpack(packing, tensor.tensor_content)[0])
    return None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def differing(runs: list[RunSummary]) -> list[str]:
    """The options whose values are not the same in every run, in run.yaml's order."""
    names: list[str] = []
    for run in runs:
        names += [name for name in run.options if name not in names and name not in NOT_COMPARED]
    return [name for name in names if len({repr(run.options.get(name)) for run in runs}) > 1]


def table(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: run, its differing options, step, best validation top-1 (%), img/s."""
    options = differing(runs)
    header = ["run", *(name.replace("_", "-") for name in options), "step", "best_val_top1", "img_per_s"]
    rows = [[str(run.folder), *(_text(run.options.get(name)) for name in options),
             _text(run.step), "" if run.best_top1 is None else f"{100 * run.best_top1:.2f}",
             "" if run.images_per_s is None else f"{run.images_per_s:.1f}"] for run in runs]
    return header, rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(map(_text, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_table(header: list[str], rows: list[list[str]], as_csv: bool) -> str:
    """CSV, or columns aligned for a terminal (numbers to the right)."""
    if as_csv:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header, *rows])
        return out.getvalue()
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric,
                                                                                          strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def show_runs(folders: list[str] | tuple[str, ...], as_csv: bool = False) -> str:
    """The table `hpcvision runs` prints."""
    header, rows = table([summarize(folder) for folder in find_runs(folders)])
    return render_table(header, rows, as_csv)
