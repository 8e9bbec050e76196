"""`hpcvision train` in one process: learning, run files, resume, damaged checkpoints, stopping early."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hpcvision.errors import UserError

SYNTHETIC = ["--synthetic", "--num-classes", "10", "--model", "small", "--image-size", "28", "--batch-size", "16",
             "--label-smoothing", "0", "--log-every", "5"]


def losses(messages: list[str]) -> list[float]:
    return [float(m) for m in re.findall(r"step \d+/\d+ epoch \S+ loss (\S+)", "\n".join(messages))]


def checkpoint_value(prefix: str, suffix: str):
    """A variable's value read straight from a checkpoint file (independent of our restore code)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    (key,) = [k for k in reader.get_variable_to_shape_map() if k.endswith(suffix)]
    return reader.get_tensor(key)


def trained_kernel(prefix: str, shape) -> np.ndarray:
    """The one trainable variable of `shape` in a checkpoint (Keras 3 names model weights under the
    optimizer's `_trainable_variables`, the shortest path in the object graph)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    (key,) = [k for k, s in reader.get_variable_to_shape_map().items()
              if "/_trainable_variables/" in k and list(s) == list(shape)]
    return reader.get_tensor(key)


def test_synthetic_training_reduces_loss_and_records_the_run(train, tmp_path):
    from hpcvision.train.checkpoint import load_run_config

    code, messages = train(*SYNTHETIC, "--steps", "30", "--checkpoint-dir", tmp_path, "--seed", "1")
    assert code == 0
    seen = losses(messages)
    assert len(seen) == 6 and seen[-1] < 0.5 * seen[0], seen
    assert (tmp_path / "ckpt-30.index").is_file()
    assert int(checkpoint_value(str(tmp_path / "ckpt-30"), "step/.ATTRIBUTES/VARIABLE_VALUE")) == 30
    config = load_run_config(tmp_path)
    assert (config.model, config.image_size, config.num_classes, config.steps) == ("small", 28, 10, 30)
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))


def test_records_training_with_eval_then_load_trained_model(train, tmp_path, records):
    import tensorflow as tf

    from hpcvision.train.checkpoint import load_trained_model

    code, messages = train("--data", records, "--model", "small", "--image-size", "32", "--batch-size", "20",
                           "--epochs", "2", "--augment", "pad_crop", "--checkpoint-dir", tmp_path, "--log-every", "5")
    assert code == 0
    evals = [m for m in messages if m.startswith("eval step")]
    assert len(evals) == 2 and all("(200 images)" in m for m in evals), evals
    model, config, labels = load_trained_model(tmp_path)
    assert config.data == str(records) and len(labels["classes"]) == 10 and labels["label_offset"] == 1
    kernel = next(v for v in model.weights if v.path.endswith("logits/kernel"))
    np.testing.assert_array_equal(kernel.numpy(), trained_kernel(str(tmp_path / "ckpt-20"), kernel.shape))
    assert model(tf.zeros([1, 32, 32, 3])).shape == (1, 10)
    train_tags, eval_tags = summary_tags(tmp_path / "logs" / "train"), summary_tags(tmp_path / "logs" / "eval")
    for tag, plugin in [("loss", "scalars"), ("top1", "scalars"), ("top5", "scalars"), ("learning_rate", "scalars"),
                        ("images_per_sec/global", "scalars"), ("images_per_sec/worker", "scalars"),
                        ("inputs/with_boxes", "images"), ("filters/first_layer", "images"),
                        ("train_step", "graph_run_metadata_graph"), ("keras", "graph_keras_model")]:
        assert train_tags.get(tag) == plugin, (tag, train_tags)
    assert sum(plugin == "histograms" for plugin in train_tags.values()) == len(model.weights)
    assert {eval_tags.get(t) for t in ("loss", "top1", "top5")} == {"scalars"}
    assert len(summary_steps(tmp_path / "logs" / "eval", "top1")) == 2  # a curve: after epoch 1 and at the end
    # The layer graph as TensorBoard's graph plugin reads it: logits fed by the features layer.
    from tensorboard.plugins.graph.keras_util import keras_model_to_graph_def

    graph = keras_model_to_graph_def(json.loads(summary_value(tmp_path / "logs" / "train", "keras")))
    nodes = {node.name: list(node.input) for node in graph.node}
    assert nodes["small/logits"] == ["small/features"], nodes


def test_training_inputs_carry_their_class_names(records):
    from hpcvision.train.config import TrainConfig
    from hpcvision.train.inputs import describe_data, sample_inputs

    config = TrainConfig(data=str(records))
    labels = describe_data(config).labels
    images, _boxes, names = sample_inputs(config, 32, labels)
    texts = {c["text"].split(",")[0] for c in labels["classes"]}
    assert len(names) == len(images) == 8 and set(names) <= texts and len(set(names)) > 1, names


def summary_events(logdir: Path):
    import tensorflow as tf

    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.data.TFRecordDataset(str(path)):
            yield tf.compat.v1.Event.FromString(event.numpy())


def summary_steps(logdir: Path, tag: str) -> list[int]:
    return [e.step for e in summary_events(logdir) for v in e.summary.value if v.tag == tag]


def summary_value(logdir: Path, tag: str) -> bytes:
    """The (last) tensor bytes written under `tag`."""
    import tensorflow as tf

    values = [v for e in summary_events(logdir) for v in e.summary.value if v.tag == tag]
    return tf.make_ndarray(values[-1].tensor).item()


def summary_tags(logdir: Path) -> dict[str, str]:
    """{tag: plugin name} of every summary in a TensorBoard log directory."""
    import tensorflow as tf

    tags = {}
    for path in logdir.glob("events.out.tfevents.*"):
        for event in tf.data.TFRecordDataset(str(path)):
            parsed = tf.compat.v1.Event.FromString(event.numpy())
            for value in parsed.summary.value:
                tags[value.tag] = value.metadata.plugin_data.plugin_name or tags.get(value.tag, "")
    return tags


def test_rerun_resumes_the_step_counter(train, tmp_path):
    assert train(*SYNTHETIC, "--steps", "5", "--checkpoint-dir", tmp_path)[0] == 0
    code, messages = train(*SYNTHETIC, "--steps", "8", "--checkpoint-dir", tmp_path)
    assert code == 0
    assert any(f"resumed from {tmp_path / 'ckpt-5'} at step 5" in m for m in messages), messages
    assert any("finished at step 8" in m for m in messages)
    assert int(checkpoint_value(str(tmp_path / "ckpt-8"), "step/.ATTRIBUTES/VARIABLE_VALUE")) == 8


def corrupt(prefix: Path) -> Path:
    data = next(prefix.parent.glob(prefix.name + ".data-*"))
    data.write_bytes(b"\xff" * data.stat().st_size)  # same size, every tensor fails its CRC
    return data


def test_corrupt_newest_checkpoint_is_named_and_the_previous_used(train, tmp_path, caplog):
    from hpcvision.train.checkpoint import load_trained_model

    args = [*SYNTHETIC, "--checkpoint-dir", tmp_path, "--checkpoint-every-steps", "5"]
    assert train(*args, "--steps", "10")[0] == 0
    newest = trained_kernel(str(tmp_path / "ckpt-10"), (256, 10))
    corrupt(tmp_path / "ckpt-10")
    model, _, _ = load_trained_model(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tmp_path / "ckpt-10") in w and "unreadable" in w for w in warnings), warnings
    kernel = next(v for v in model.weights if v.path.endswith("logits/kernel")).numpy()
    np.testing.assert_array_equal(kernel, trained_kernel(str(tmp_path / "ckpt-5"), kernel.shape))
    assert not np.array_equal(kernel, newest)
    # Training resumes from the previous one too.
    code, messages = train(*args, "--steps", "12")
    assert code == 0 and any("at step 5" in m for m in messages), messages
    for index in tmp_path.glob("ckpt-*.index"):
        corrupt(index.with_suffix(""))
    with pytest.raises(UserError, match="no usable checkpoint"):
        load_trained_model(tmp_path)


FINISHED = [*SYNTHETIC, "--steps", "3", "--checkpoint-every-steps", "1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 3-step run with ckpt-1, ckpt-2, ckpt-3; tests work on copies (`run_copy`)."""
    from hpcvision.cli import main

    folder = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *FINISHED, "--checkpoint-dir", str(folder)]) == 0
    return folder


def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and mtime (a rewrite with the same bytes shows too)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_nothing_left_to_do_writes_nothing(train, finished_run, tmp_path):
    run = run_copy(finished_run, tmp_path)
    before = snapshot(run)
    folders = [run, *(p for p in run.rglob("*") if p.is_dir())]
    if os.geteuid() != 0:  # a real read-only folder; root writes anyway, so there the snapshot is the proof
        for folder in folders:
            folder.chmod(0o555)
    try:
        code, messages = train(*FINISHED, "--checkpoint-dir", run)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert code == 0 and any("finished at step 3" in m for m in messages), messages
    assert snapshot(run) == before


@pytest.mark.parametrize(("flags", "theirs", "ours"), [
    (["--num-classes", "7"], "10 classes", "7 classes"),
    (["--optimizer", "adam"], "--optimizer sgd", "--optimizer adam"),
    (["--model", "resnet18"], "--model small", "--model resnet18"),
])
def test_a_folder_holding_another_run_is_refused_in_one_line(train, finished_run, tmp_path, caplog, flags, theirs,
                                                             ours):
    run = run_copy(finished_run, tmp_path)
    before = snapshot(run)
    code, messages = train(*SYNTHETIC, *flags, "--steps", "5", "--checkpoint-dir", run)
    assert code == 2
    assert snapshot(run) == before  # run.yaml and labels.json still describe the checkpoints
    assert messages[-1] == (f"hpcvision: error: {run / 'run.yaml'}: the run there has {theirs}, this command {ours}; "
                            f"to resume it, `hpcvision train --checkpoint-dir {run}` alone uses its settings; for a "
                            "new run, another --checkpoint-dir"), messages
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "warnings besides the one line"


def test_another_runs_folder_and_a_missing_init_checkpoint_are_refused_before_tensorflow_starts(finished_run,
                                                                                             tmp_path):
    script = ("import sys; from hpcvision.cli import main; code = main(sys.argv[1:]); "
              "print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow', code)")
    for flags in (["--optimizer", "adam", "--checkpoint-dir", str(finished_run)],
                  ["--checkpoint-dir", str(tmp_path / "new"), "--init-checkpoint", str(tmp_path / "none.h5")]):
        result = subprocess.run([sys.executable, "-c", script, "train", *SYNTHETIC, "--steps", "5", *flags],
                                capture_output=True, text=True, timeout=120)
        assert result.stdout.split() == ["no", "tensorflow", "2"], result.stdout + result.stderr
        assert result.stderr.count("hpcvision: error:") == 1, result.stderr


def test_checkpoint_dir_alone_resumes_as_run_yaml_says_with_absolute_paths(train, finished_run, tmp_path,
                                                                         monkeypatch):
    from hpcvision.train.checkpoint import load_run_config

    run_copy(finished_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    code, messages = train("--checkpoint-dir", "run", "--steps", "5")
    assert code == 0, messages
    assert any("resumed from run/ckpt-3 at step 3" in m for m in messages), messages
    assert any("finished at step 5" in m for m in messages)
    config = load_run_config(tmp_path / "run")
    assert (config.checkpoint_dir, config.model, config.steps) == (str(tmp_path / "run"), "small", 5)


def test_run_yaml_keeps_absolute_paths_and_not_the_jobs_deadline(tmp_path, monkeypatch):
    from hpcvision.train.checkpoint import load_run_config, write_run_files
    from hpcvision.train.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    write_run_files(TrainConfig(data="rec", val_data="../val", init_checkpoint="runs/a/ckpt-3",
                                deadline="2026-01-01T00:00:00"), {"classes": []}, "run")
    config = load_run_config(tmp_path / "run")
    assert (config.data, config.val_data, config.init_checkpoint, config.deadline) == (
        str(tmp_path / "rec"), str(tmp_path.parent / "val"), str(tmp_path / "runs/a/ckpt-3"), None)


def test_a_changed_global_batch_is_refused_unless_allowed_and_the_epoch_stays_true(train, tmp_path):
    from hpcvision.train.checkpoint import load_run_config

    epoch = [*SYNTHETIC, "--examples-per-epoch", "64", "--log-every", "1", "--checkpoint-dir", tmp_path]
    assert train(*epoch, "--epochs", "1")[0] == 0  # 4 steps of 16
    code, messages = train(*epoch, "--epochs", "2", "--batch-size", "32")
    assert code == 2 and "the run's steps so far are of global batch 16, this command's is 32" in messages[-1]
    code, messages = train(*epoch, "--epochs", "2", "--batch-size", "32", "--allow-batch-change")
    assert code == 0, messages
    assert any("global batch 16 -> 32 at step 4: the run is at epoch 1.00" in m for m in messages), messages
    # Epoch 2 ends after 2 more steps of 32 (steps 5 and 6), at epoch 2.00, not 1.50 or 3.00.
    assert re.findall(r"step (\d+)/(\d+) epoch (\S+)", "\n".join(messages)) == [
        ("5", "6", "1.50"), ("6", "6", "2.00")]
    config = load_run_config(tmp_path)
    assert (config.global_batch, config.step_shift, config.allow_batch_change) == (32, -2, False)
    assert train(*epoch, "--epochs", "2", "--batch-size", "32")[0] == 0  # the same batch again: no question


def test_leftovers_of_killed_saves_go_and_pruning_resumes(train, finished_run, tmp_path):
    run = run_copy(finished_run, tmp_path)
    (run / "checkpoint").unlink()  # lost: the manager no longer knows ckpt-1..3 and would never prune them
    # What kill -9 during saves leaves (as TF 2.21 names it), and look-alikes that are not ours.
    (run / "ckpt-7_temp").mkdir()
    (run / "ckpt-7_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate11431488613528809621").write_bytes(
        b"\0" * 100)
    leftovers = ["ckpt-7_temp", "ckpt-7.index.tempstate8123", "ckpt-7.data-00000-of-00001",
                 "checkpoint.tmp" + "0a" * 16]
    for name in leftovers[1:]:
        (run / name).write_bytes(b"\0" * 10)
    strangers = ["ckpt-7_temp.txt", "other_temp", "ckpt-notes.data-00000-of-00001"]
    for name in strangers:
        (run / name).write_text("mine")
    code, messages = train(*SYNTHETIC, "--steps", "5", "--checkpoint-every-steps", "1", "--keep-checkpoints", "2",
                           "--checkpoint-dir", run)
    assert code == 0, messages
    assert sorted(p.name for p in run.glob("ckpt-*.index")) == ["ckpt-4.index", "ckpt-5.index"]
    assert not [name for name in leftovers if (run / name).exists()]
    assert all((run / name).read_text() == "mine" for name in strangers)


def test_deadline_already_passed_checkpoints_and_exits_0(train, tmp_path):
    started = time.monotonic()
    code, messages = train(*SYNTHETIC, "--steps", "100000", "--deadline", "1", "--checkpoint-dir", tmp_path)
    assert code == 0 and time.monotonic() - started < 60
    assert any("stopping at step 1 of 100000 (deadline)" in m for m in messages), messages
    assert (tmp_path / "ckpt-1.index").is_file()
    code, _ = train(*SYNTHETIC, "--steps", "100000", "--deadline", "1", "--checkpoint-dir", tmp_path,
                    "--incomplete-exit-code", "3")
    assert code == 3 and (tmp_path / "ckpt-2.index").is_file()


def test_stop_request_flags_signals_and_deadline_then_restores_handlers():
    from hpcvision.train.loop import StopRequest

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    with StopRequest(time.time() + 100, 50) as stop:
        assert stop.reason() is None
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with StopRequest(time.time() + 100, 200) as stop:
        assert stop.reason() == "deadline"
    assert {sig: signal.getsignal(sig) for sig in before} == before
    try:
        with StopRequest(None, 0) as stop:
            assert stop.reason() is None
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.1)
            assert stop.reason() == "SIGUSR1"
        # Stopping on a signal: its repeats are ignored from now on (this process is on its way out).
        assert {sig: signal.getsignal(sig) for sig in before} == dict.fromkeys(before, signal.SIG_IGN)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def signal_until_exit(process: subprocess.Popen, signum: int, every_s: float = 0.02) -> None:
    """Send `signum` again and again, as schedulers and `launch` do, until `process` has exited."""
    while process.poll() is None:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            return
        time.sleep(every_s)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path, hpcvision_exe, signum=signal.SIGTERM):
    command = [*hpcvision_exe, "train", *SYNTHETIC, "--steps", "100000", "--log-every", "1",
               "--checkpoint-dir", str(tmp_path)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        for line in process.stderr:
            if "step 3/" in line:
                break
        # Not one signal but a stream of them, through the save, the final flush and TF's shutdown.
        storm = threading.Thread(target=signal_until_exit, args=(process, signum), daemon=True)
        storm.start()
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 0, rest
    finally:
        process.kill()
    match = re.search(rf"stopping at step (\d+) of 100000 \({signal.Signals(signum).name}\)", rest)
    assert match, rest
    assert (tmp_path / f"ckpt-{match.group(1)}.index").is_file()


def test_bad_input_is_one_line_error(run_cli, tmp_path):
    code, _, err = run_cli("train", "--synthetic", "--num-classes", "3", "--model", "nosuchnet",
                           "--checkpoint-dir", tmp_path)
    assert code == 2 and "unknown model 'nosuchnet'" in err and "Traceback" not in err
    code, _, err = run_cli("train", "--data", tmp_path / "missing", "--model", "small", "--checkpoint-dir", tmp_path)
    assert code == 2 and "missing/train-manifest.json" in err
    code, _, err = run_cli("launch", "--workers", "0", "--", "--synthetic")
    assert code == 2 and "--workers 0: must be >= 1" in err
