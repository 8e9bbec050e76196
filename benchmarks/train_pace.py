"""Training that keeps its pace: overall img/s of a multi-epoch run against its median window.

    python benchmarks/train_pace.py                      # demo recipe, 3 epochs, 2 workers (~3-5 min on 2 cores)
    python benchmarks/train_pace.py --data demo/records  # reuse shards a demo already built
    python benchmarks/train_pace.py --quick              # smoke run (tiny data, short epochs)

Runs `hpcvision launch --workers 2` (all-reduce) on configs/demo.yaml with timed checkpoints and
timestamps every progress line as it arrives. Prints:
- overall img/s (first to last progress line) / the median window's img/s (target >= 0.95);
- for each window holding an epoch boundary or a save: the seconds it took beyond what the median
  rate gives for its steps (what the boundary or the save cost).
Without --data it first writes Fashion-MNIST (or synthetic shapes) as TFRecord shards with
`hpcvision data sample/extract/build`, as `make demo` does.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP = re.compile(r"\] .*step (\d+)/(\d+) epoch")
SAVED = re.compile(r"checkpoint \S+ written \(step (\d+)\)")
PLAN = re.compile(r"global batch (\d+), (\d+) steps/epoch")
ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path(os.environ.get("FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def hpcvision(*args: str, env: dict) -> None:
    subprocess.run([sys.executable, "-m", "hpcvision", *args], env=env, check=True, capture_output=True)


def build_records(folder: Path, env: dict, quick: bool) -> Path:
    """TFRecord shards (8 train, 2 validation) of Fashion-MNIST, or synthetic shapes without it."""
    sample, extracted, records = folder / "sample", folder / "extracted", folder / "records"
    source = ["--fashion-mnist", str(FASHION_MNIST)]
    if quick or not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        source = ["--source", "synthetic"]
    hpcvision("data", "sample", *source, str(sample), env=env)
    listing = folder / "all_files.txt"
    listing.write_text((sample / "train_files.txt").read_text() + (sample / "validation_files.txt").read_text())
    hpcvision("data", "extract", "--images", str(sample / "Images.tar"), "--annotations",
              str(sample / "Annotation.tar.gz"), "--list", str(listing), "--synsets", str(sample / "synsets.txt"),
              "--out", str(extracted), "--workers", "2", env=env)
    for split, shards in (("train", "8"), ("validation", "2")):
        hpcvision("data", "build", "--images", str(extracted / "images"), "--annotations",
                  str(extracted / "annotations"), "--list", str(sample / f"{split}_files.txt"), "--synsets",
                  str(sample / "synsets.txt"), "--metadata", str(sample / "metadata.txt"), "--out", str(records),
                  "--name", split, "--shards", shards, "--workers", "2", env=env)
    return records


def timed_run(argv: list[str], env: dict) -> list[tuple[float, str]]:
    """(arrival time, line) of everything the launch prints."""
    lines = []
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip()))
    if proc.returncode:
        sys.stderr.write("\n".join(line for _, line in lines[-30:]) + "\n")
        raise SystemExit(f"launch exited {proc.returncode}")
    return lines


def pace(lines: list[tuple[float, str]]) -> dict:
    """Overall and median-window rates, and the extra seconds of each window with a boundary or a save."""
    batch = per_epoch = 0
    points, saves = [], {}
    for arrival, line in lines:
        if (found := PLAN.search(line)) and not batch:
            batch, per_epoch = int(found[1]), int(found[2])
        elif (found := SAVED.search(line)) and "[worker0]" in line:
            saves[int(found[1])] = arrival
        elif (found := STEP.search(line)) and "[worker0]" in line:
            points.append((int(found[1]), arrival))
    windows = []  # (first step, last step, seconds)
    for (step0, t0), (step1, t1) in zip(points, points[1:], strict=False):
        windows.append((step0, step1, t1 - t0))
    median = statistics.median(batch * (s1 - s0) / dt for s0, s1, dt in windows)
    first, last = points[0], points[-1]
    overall = batch * (last[0] - first[0]) / (last[1] - first[1])
    boundaries, save_costs = [], []
    for step0, step1, seconds in windows:
        extra = seconds - batch * (step1 - step0) / median
        # Work done after the line of step N (a save at N, the start of the epoch after N) delays the next line.
        boundary = -(-step0 // per_epoch) * per_epoch  # the first epoch end at or after step0
        if 0 < boundary < step1:
            boundaries.append((boundary, extra))
        for saved in sorted(s for s in saves if step0 <= s < step1):
            save_costs.append((saved, extra))
    if last[0] in saves:  # the final save comes after the last progress line: its own time
        save_costs.append((last[0], saves[last[0]] - last[1]))
    return {"overall": overall, "median": median, "boundaries": boundaries, "saves": save_costs,
            "steps": last[0] - first[0], "seconds": last[1] - first[1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="TFRecord folder (train and validation shards); default: built")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--save-minutes", type=float, default=0.25, help="timed checkpoint interval")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny synthetic data and short epochs: a smoke run")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="train-pace-") as tmp:
        work = Path(tmp)
        data = args.data or build_records(work, env, args.quick)
        extra = ["--examples-per-epoch", "2560", "--batch-size", "32"] if args.quick else []
        argv_ = [sys.executable, "-m", "hpcvision", "launch", "--workers", "2", "--", "--config",
                 str(ROOT / "configs" / "demo.yaml"), "--data", str(data), "--checkpoint-dir", str(work / "run"),
                 "--epochs", str(args.epochs), "--log-every", str(args.log_every), "--checkpoint-every-minutes",
                 str(args.save_minutes), *extra]
        load = os.getloadavg()[0]
        result = pace(timed_run(argv_, env))
    print(f"2 all-reduce workers, demo recipe, {args.epochs:g} epochs, timed saves every {args.save_minutes:g} min; "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    for step, extra_s in result["boundaries"]:
        print(f"  epoch boundary at step {step}: {extra_s:+.1f} s beyond the median pace")
    for step, extra_s in result["saves"]:
        print(f"  save at step {step}: {extra_s:+.1f} s beyond the median pace")
    for name, costs in (("epoch boundary", result["boundaries"]), ("save", result["saves"])):
        if costs:
            seconds = [extra_s for _, extra_s in costs]
            print(f"per {name}: mean {statistics.mean(seconds):+.1f} s, max {max(seconds):+.1f} s ({len(seconds)})")
    print(f"overall {result['overall']:.0f} img/s ({result['steps']} steps in {result['seconds']:.1f} s), "
          f"median window {result['median']:.0f} img/s")
    print(f"ratio overall/median window: {result['overall'] / result['median']:.2f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
