"""Transfer learning with `hpcvision train --init-checkpoint`: does a network trained on five Fashion-MNIST
classes help to learn the other five from 10 % of their training images?

`small` is trained on classes 0-4 (T-shirt, trouser, pullover, dress, coat; all their training images).
Then classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) are learnt from a tenth of their training
images, three ways with the same recipe and step budget: (a) from scratch, (b) fine-tuned from the first
network (`--init-checkpoint`), (c) the same with `--freeze-backbone` (the head only), and (c) again with
a 10x learning rate (a linear head alone usually wants more). Each is scored by
`hpcvision evaluate` on all 5,000 validation (test-set) images of classes 5-9. The baseline is (a):
the figures are (b) and (c), and their gain over it in points of top-1 (the recipe: the 5-epoch demo recipe's, configs/demo.yaml until 2026-12-03,
batch 64; the source network: 2 epochs of batch 128).

Records are written straight from the IDX files (28 px gray as RGB JPEG q95, one shard per split), so
the run measures training, not `data sample`/`extract`/`build`. Everything goes under --work (a
temporary folder, removed afterwards, unless given).

    python benchmarks/transfer.py            # a few minutes on 2 cores
    python benchmarks/transfer.py --quick    # 20 images per class, a few steps: a smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SOURCE_CLASSES, TARGET_CLASSES = range(0, 5), range(5, 10)
LEARNING_RATE = 0.003  # the 5-epoch demo recipe's (configs/demo.yaml until 2026-12-03), for a global batch of 256
RECIPE = ["--model", "small", "--image-size", "28", "--optimizer", "adam", "--learning-rate", str(LEARNING_RATE),
          "--warmup-epochs", "1", "--schedule", "cosine", "--label-smoothing", "0.1", "--weight-decay", "0.0005",
          "--augment", "none", "--seed", "1", "--no-eval", "--checkpoint-every-steps", "0",
          "--checkpoint-every-minutes", "0", "--histogram-every", "0"]


def write_split(out: Path, name: str, images: np.ndarray, labels: np.ndarray, classes: list[int]) -> None:
    """One shard and its manifest: `images` (n, 28, 28) uint8 of Fashion-MNIST labels `classes`, relabelled
    0..len(classes)-1 (stored 1-based, as `data build` does)."""
    from PIL import Image

    from hpcvision.data.records import RecordWriter, encode_example
    from hpcvision.data.sample import FASHION_SYNSETS

    file = f"{name}-00000-of-00001"
    with RecordWriter(out / file) as writer:
        for i, (gray, label) in enumerate(zip(images, labels, strict=True)):
            buffer = io.BytesIO()
            Image.fromarray(gray, mode="L").convert("RGB").save(buffer, format="JPEG", quality=95)
            index = classes.index(int(label))
            wnid, text = FASHION_SYNSETS[int(label)]
            writer.write(encode_example(encoded=buffer.getvalue(), filename=f"{name}_{i}.JPEG", height=28,
                                        width=28, label=index + 1, synset=wnid, text=text))
    entries = [{"label": i + 1, "wnid": FASHION_SYNSETS[c][0], "text": FASHION_SYNSETS[c][1]}
               for i, c in enumerate(classes)]
    manifest = {"num_examples": len(images), "shards": [{"file": file, "count": len(images)}], "label_offset": 1,
                "labels": entries, "num_classes": len(classes)}
    (out / f"{name}-manifest.json").write_text(json.dumps(manifest))


def pick(images, labels, classes, fraction: float, limit: int | None, rng) -> tuple[np.ndarray, np.ndarray]:
    """`fraction` of each of `classes`' images (at most `limit` per class), in a random order."""
    chosen = []
    for c in classes:
        indices = np.flatnonzero(labels == c)
        count = min(len(indices), limit or len(indices), max(1, round(fraction * len(indices))))
        chosen.append(rng.choice(indices, count, replace=False))
    order = rng.permutation(np.concatenate(chosen))
    return images[order], labels[order]


def load(folder: Path, quick: bool):
    """Fashion-MNIST, or random pixels for --quick where it is not installed; (arrays, source name)."""
    from hpcvision.data.fashion_mnist import has_fashion_mnist, load_fashion_mnist

    if has_fashion_mnist(folder):
        return load_fashion_mnist(folder), "Fashion-MNIST"
    if not quick:
        raise SystemExit(f"{folder}: no Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) if i % 2 == 0 else rng.integers(0, 10, n)
              for i, n in enumerate((400, 400, 400, 400))]
    return arrays, "random pixels (no Fashion-MNIST here)"


def train_and_score(work: Path, name: str, data: Path, args: list[str]) -> tuple[float, float]:
    """`hpcvision train` then `hpcvision evaluate` on data's validation split; (top-1, training seconds)."""
    from hpcvision.cli import main

    run = work / name
    start = time.perf_counter()
    if main(["train", *RECIPE, "--data", str(data), "--checkpoint-dir", str(run), *args]) != 0:
        raise SystemExit(f"training {name} failed")
    seconds = time.perf_counter() - start
    if main(["evaluate", "--checkpoint-dir", str(run), "--data", str(data), "--name", "validation",
             "--out", str(run / "eval"), "--batch-size", "500"]) != 0:
        raise SystemExit(f"evaluating {name} failed")
    return json.loads((run / "eval" / "metrics.json").read_text())["top1"], seconds


def main(argv: list[str] | None = None) -> int:
    from hpcvision.data.config import DEFAULT_FASHION_MNIST

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fashion-mnist", default=str(DEFAULT_FASHION_MNIST), help="folder with the four IDX files")
    parser.add_argument("--work", help="folder for records and runs (default: a temporary one, removed)")
    parser.add_argument("--source-epochs", type=float, default=2.0, help="epochs of the 5-class network")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the other classes' training images")
    parser.add_argument("--steps", type=int, default=300, help="step budget of each of (a), (b), (c)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="20 images per class, 4 steps each: a smoke run")
    args = parser.parse_args(argv)

    arrays, source = load(Path(args.fashion_mnist), args.quick)
    train_images, train_labels, test_images, test_labels = arrays
    limit = 20 if args.quick else None
    batch, steps = (8, 4) if args.quick else (args.batch_size, args.steps)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hpcvision-transfer-"))
    rng = np.random.default_rng(1)
    try:
        splits = {"source": (list(SOURCE_CLASSES), 1.0), "target": (list(TARGET_CLASSES), args.fraction)}
        for folder, (classes, fraction) in splits.items():
            (work / folder).mkdir(parents=True, exist_ok=True)
            write_split(work / folder, "train", *pick(train_images, train_labels, classes, fraction, limit, rng),
                        classes)
            write_split(work / folder, "validation", *pick(test_images, test_labels, classes, 1.0, limit, rng),
                        classes)
        counts = {f: json.loads((work / f / "train-manifest.json").read_text())["num_examples"] for f in splits}
        print(f"data: {source}; source classes 0-4 {counts['source']} train images, target classes 5-9 "
              f"{counts['target']} ({args.fraction:.0%}); {steps} steps of batch {batch} each", flush=True)

        budget = ["--batch-size", str(batch)]
        source_budget = ["--steps", "4"] if args.quick else ["--epochs", str(args.source_epochs)]
        base, seconds = train_and_score(work, "source", work / "source", ["--batch-size", "128", *source_budget]
                                        if not args.quick else [*budget, *source_budget])
        print(f"source network, classes 0-4: top-1 {base:.4f} ({seconds:.0f} s)", flush=True)
        results = {}
        init = ["--init-checkpoint", str(work / "source")]
        runs = {"scratch": [], "fine-tuned": init, "frozen": [*init, "--freeze-backbone"],
                # A linear head alone usually wants a larger rate than the whole network: the same run at 10x.
                "frozen-10x": [*init, "--freeze-backbone", "--learning-rate", str(10 * LEARNING_RATE)]}
        for name, extra in runs.items():
            results[name] = train_and_score(work, name, work / "target", [*budget, "--steps", str(steps), *extra])
            print(f"{name:>10}: top-1 {results[name][0]:.4f} on classes 5-9 ({results[name][1]:.0f} s)", flush=True)
        scratch = results["scratch"][0]
        for name in ("fine-tuned", "frozen", "frozen-10x"):
            print(f"ratio {name}/scratch: top-1 x{results[name][0] / max(scratch, 1e-9):.3f} "
                  f"({100 * (results[name][0] - scratch):+.2f} points)")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
