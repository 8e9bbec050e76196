"""Several devices per task without GPUs (issue 11): the CPU split into logical devices (several_devices.py).

MirroredStrategy over 2 devices and 2 all-reduce workers with 2 devices each give the loss and weights
of fewer replicas (down to one) with the same global batch; mixed precision trains under both.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_records import build_records

DRIVER = Path(__file__).with_name("several_devices.py")
# Batch norm synchronized and no dropout (the `tiny` model): replicas then compute exactly what one device does;
# clipping that binds at every step checks that the norm is the all-reduced gradient's.
MATCHING = ["--model", "tiny", "--image-size", "16", "--augment", "none", "--steps", "3", "--log-every", "1",
            "--no-eval", "--seed", "5", "--sync-batch-norm", "--clip-norm", "0.05", "--optimizer", "sgd",
            "--learning-rate", "0.8", "--schedule", "constant", "--label-smoothing", "0",
            "--checkpoint-every-minutes", "0"]
SYNTHETIC = ["--synthetic", "--num-classes", "4", "--model", "tiny", "--image-size", "16", "--batch-size", "8",
             "--steps", "12", "--log-every", "3", "--optimizer", "adam", "--learning-rate", "0.05",
             "--label-smoothing", "0", "--checkpoint-every-minutes", "0", "--seed", "1"]


@pytest.fixture(scope="module")
def records(tmp_path_factory, hpcvision_exe):
    return build_records(tmp_path_factory.mktemp("records"), hpcvision_exe)


def run(devices: int, *args, workers: int = 0) -> str:
    """`hpcvision train ARGS` with the CPU split in `devices`, alone or as `workers` all-reduce workers; its log."""
    command = [sys.executable, str(DRIVER), str(devices), "train", *map(str, args)]
    if workers:
        launcher = ("import sys; from hpcvision.cluster.launch import launch_local; "
                    f"sys.exit(launch_local([], workers={workers}, command=sys.argv[1:]))")
        command = [sys.executable, "-c", launcher, *command]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def losses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"step \d+/\d+ epoch \S+ loss (\S+)", log)]


def checkpoint_values(prefix: Path) -> dict[str, np.ndarray]:
    """Every value in a checkpoint, read with TensorFlow's reader (independent of our restore code)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_same_training(log: str, folder: Path, reference_log: str, reference: Path, weights: int = 5) -> None:
    assert losses(log) == pytest.approx(losses(reference_log), rel=1e-5) and len(losses(log)) == 3
    values, expected = checkpoint_values(folder / "ckpt-3"), checkpoint_values(reference / "ckpt-3")
    assert values.keys() == expected.keys()
    trained = [k for k in values if "/_trainable_variables/" in k]
    assert len(trained) == weights  # conv kernel, BN gamma and beta (or conv bias), dense kernel and bias
    for key, value in values.items():
        np.testing.assert_allclose(value, expected[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_mirrored_over_two_devices_matches_one_replica(records, tmp_path):
    two = run(2, *MATCHING, "--data", records, "--strategy", "mirrored", "--batch-size", "8",
              "--checkpoint-dir", tmp_path / "two")
    assert "mirrored strategy, 2 replica(s), global batch 16" in two
    one = run(1, *MATCHING, "--data", records, "--batch-size", "16", "--checkpoint-dir", tmp_path / "one")
    assert "one strategy, 1 replica(s), global batch 16" in one
    assert_same_training(two, tmp_path / "two", one, tmp_path / "one")


def test_two_workers_with_two_devices_each_match_one_device_each(records, tmp_path):
    """Each worker reads its own shard files, so the reference is 2 workers of 1 device and twice the batch."""
    four = run(2, *MATCHING, "--data", records, "--batch-size", "4", "--checkpoint-dir", tmp_path / "four",
               workers=2)
    assert "multi-worker strategy, 4 replica(s), global batch 16" in four
    two = run(1, *MATCHING, "--data", records, "--batch-size", "8", "--checkpoint-dir", tmp_path / "two", workers=2)
    assert "multi-worker strategy, 2 replica(s), global batch 16" in two
    assert_same_training(four, tmp_path / "four", two, tmp_path / "two")
    digests = set(re.findall(r"weights sha256 (\w+)", four))
    assert len(re.findall(r"weights sha256", four)) == 2 and len(digests) == 1  # both workers hold the same


def whole_batch_split(records: Path, out: Path, per_shard: int) -> Path:
    """A training split of the first `per_shard` records of each of `records`' train shards (copied as they are)."""
    from hpcvision.data.records import RecordWriter, read_records

    manifest = json.loads((records / "train-manifest.json").read_text())
    out.mkdir()
    for shard in manifest["shards"]:
        with RecordWriter(out / shard["file"]) as writer:
            for _, record in zip(range(per_shard), read_records(records / shard["file"]), strict=False):
                writer.write(record)
        shard["count"] = per_shard
    manifest["num_examples"] = per_shard * len(manifest["shards"])
    (out / "train-manifest.json").write_text(json.dumps(manifest))
    return out


def test_two_workers_with_two_devices_each_match_one_replica(run_cli, caplog, records, tmp_path):
    """2 workers x 2 devices x 4 == one process with batch 16, on a split of 16 records (2 shards of 8): every
    step's global batch is the whole split, so both see the same examples whatever each worker's shard order."""
    from several_devices import register_tiny

    data = whole_batch_split(records, tmp_path / "data", per_shard=8)
    four = run(2, *MATCHING, "--data", data, "--batch-size", "4", "--checkpoint-dir", tmp_path / "four", workers=2)
    assert "multi-worker strategy, 4 replica(s), global batch 16" in four
    register_tiny()
    caplog.set_level(logging.INFO, logger="hpcvision")
    code, _out, err = run_cli("train", *MATCHING, "--data", data, "--batch-size", "16", "--checkpoint-dir",
                              tmp_path / "one")
    assert code == 0, err
    one = "\n".join(r.getMessage() for r in caplog.records)
    assert "one strategy, 1 replica(s), global batch 16" in one
    assert_same_training(four, tmp_path / "four", one, tmp_path / "one")


def test_accumulated_micro_batches_match_one_larger_batch(run_cli, caplog, records, tmp_path):
    """--accumulate 4 x batch 4 == batch 16: same examples, one update (a model without batch norm, whose
    statistics would be the micro-batches')."""
    from several_devices import register_tiny

    register_tiny()
    args = [a if a != "tiny" else "tiny_no_bn" for a in MATCHING if a != "--sync-batch-norm"]
    args += ["--data", records, "--weight-decay", "0.01", "--optimizer", "adam", "--learning-rate", "0.05"]
    logs = []
    for name, batch in (("micro", ["--batch-size", "4", "--accumulate", "4"]), ("one", ["--batch-size", "16"])):
        caplog.clear()
        caplog.set_level(logging.INFO, logger="hpcvision")
        code, _out, err = run_cli("train", *args, *batch, "--checkpoint-dir", tmp_path / name)
        assert code == 0, err
        logs.append("\n".join(r.getMessage() for r in caplog.records))
    assert "global batch 16 (4 micro-batches of 4)" in logs[0]
    assert_same_training(logs[0], tmp_path / "micro", logs[1], tmp_path / "one", weights=4)


def test_mixed_float16_with_loss_scaling_trains_under_mirrored(tmp_path):
    """With micro-batches (a while loop) and synchronized batch norm in it, too."""
    log = run(2, *SYNTHETIC, "--strategy", "mirrored", "--mixed-precision", "mixed_float16", "--accumulate", "2",
              "--sync-batch-norm", "--ema-decay", "0.9", "--checkpoint-dir", tmp_path)
    assert "mirrored strategy, 2 replica(s), global batch 32 (2 micro-batches of 16)" in log
    seen = losses(log)
    assert len(seen) == 4 and all(np.isfinite(seen)) and seen[-1] < seen[0], seen
    values = checkpoint_values(tmp_path / "ckpt-12")
    assert any(key.startswith("optimizer/dynamic_scale") for key in values)  # Keras' LossScaleOptimizer
    assert any(key.startswith("ema/") for key in values)  # the averages, kept by the wrapped optimizer
    assert all(np.all(np.isfinite(v)) for v in values.values() if np.issubdtype(v.dtype, np.floating))


def test_mixed_bfloat16_trains_under_all_reduce_with_the_batch_recipe(records, tmp_path):
    """Records through colour distortion, RandAugment, erasing, MixUp/CutMix; LAMB with weight EMA."""
    recipe = ["--color-distortion", "--randaugment-ops", "2", "--random-erasing", "0.5", "--mixup-alpha", "0.2",
              "--cutmix-alpha", "1", "--optimizer", "lamb", "--ema-decay", "0.9", "--augment", "inception"]
    args = [a for a in SYNTHETIC if a not in ("--synthetic", "--num-classes", "4")]
    log = run(1, *args, "--data", records, *recipe, "--mixed-precision", "mixed_bfloat16", "--checkpoint-dir",
              tmp_path, workers=2)
    assert "multi-worker strategy, 2 replica(s)" in log
    seen = losses(log)
    assert len(seen) == 4 and all(np.isfinite(seen)), seen
    assert re.search(r"eval step 12: loss \d\S* top-1", log)  # the averages, evaluated
    assert len(set(re.findall(r"weights sha256 (\w+)", log))) == 1
