"""Shared by the train, launch and inference tests: small record sets, built by the CLI or written directly."""

from __future__ import annotations

import json
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


def write_split(out: Path, name: str, examples: list[tuple[bytes, int, int, int]], classes: list[dict],
                shards: int) -> None:
    """Shards and manifest of `examples` (JPEG, 0-based label, height, width; example i in shard i % shards),
    written directly, not built: records that `data build` would refuse can be tested this way.

    `classes[label]` gives the wnid and text; labels are stored 1-based, and the manifest counts every record.
    """
    from hpcvision.data.records import Box, RecordWriter, encode_example

    entries = []
    for s in range(shards):
        file = f"{name}-{s:05d}-of-{shards:05d}"
        part = list(range(s, len(examples), shards))
        with RecordWriter(out / file) as writer:
            for i in part:
                jpeg, label, height, width = examples[i]
                writer.write(encode_example(encoded=jpeg, filename=f"{name}_{i}.JPEG", height=height, width=width,
                                            label=label + 1, synset=classes[label]["wnid"],
                                            text=classes[label]["text"], boxes=[Box(0.1, 0.1, 0.9, 0.9)]))
        entries.append({"file": file, "count": len(part)})
    labels = [{"label": c + 1, "wnid": cls["wnid"], "text": cls["text"]} for c, cls in enumerate(classes)]
    manifest = {"num_examples": len(examples), "shards": entries, "label_offset": 1, "labels": labels,
                "num_classes": len(classes)}
    (out / f"{name}-manifest.json").write_text(json.dumps(manifest))
