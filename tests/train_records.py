"""Shared by the train and launch tests: a small real-layout record set built by the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def build_records(root: Path, exe: list[str]) -> Path:
    """`data sample --source synthetic` (10 classes x 20 images per split) -> train/validation shards."""
    sample, out = root / "sample", root / "rec"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([*exe, "data", "sample", "--source", "synthetic", "--per-class", "20", str(sample)],
                   check=True, capture_output=True, env=env)
    for name in ("train", "validation"):
        subprocess.run([*exe, "data", "build", "--images", str(sample / "Images.tar"), "--annotations",
                        str(sample / "Annotation.tar.gz"), "--list", str(sample / f"{name}_files.txt"),
                        "--synsets", str(sample / "synsets.txt"), "--metadata", str(sample / "metadata.txt"),
                        "--out", str(out), "--name", name, "--shards", "2"], check=True, capture_output=True, env=env)
    return out
