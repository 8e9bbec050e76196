"""Training pieces that need no cluster: strategy choice, roles, schedule, loss, summaries, checkpoints."""

from __future__ import annotations

import json
import math
import socket
import threading
import time

import numpy as np
import pytest

from hpcvision.cluster.plan import plan_cluster
from hpcvision.errors import UserError
from hpcvision.train import checkpoint as ckpt_lib
from hpcvision.train.strategy import choose_kind, resolve_role, wait_for_chief_exit


def cluster(**tasks):
    return {"cluster": {name: [f"127.0.0.1:{2000 + i}" for i in range(n)] for name, n in tasks.items()},
            "task": {"type": "worker", "index": 0}}


@pytest.mark.parametrize("flag, tf_config, gpus, expected", [
    ("auto", None, 0, "one"),
    ("auto", None, 1, "one"),
    ("auto", None, 4, "mirrored"),
    ("auto", cluster(worker=1), 0, "one"),
    ("auto", cluster(worker=2), 0, "multi-worker"),
    ("auto", cluster(chief=1, worker=1), 0, "multi-worker"),
    ("auto", cluster(chief=1, ps=1, worker=2), 0, "parameter-server"),
    ("one", cluster(worker=2), 0, "one"),
    ("multi-worker", None, 0, "multi-worker"),
])
def test_strategy_choice(flag, tf_config, gpus, expected):
    assert choose_kind(flag, tf_config, gpus) == expected


def test_parameter_server_needs_ps_tasks():
    with pytest.raises(UserError, match="parameter-server needs"):
        choose_kind("parameter-server", cluster(worker=2), 0)


def test_parameter_servers_without_a_chief_is_a_user_error():
    with pytest.raises(UserError, match="no 'chief'"):
        choose_kind("auto", cluster(ps=1, worker=2), 0)


def test_roles_from_tf_config():
    def role(tf_config, strategy="auto"):
        return resolve_role(plan_cluster(0, {"TF_CONFIG": json.dumps(tf_config)}), strategy, 0)

    mwms = cluster(worker=3)
    mwms["task"] = {"type": "worker", "index": 0}
    first = role(mwms)
    assert (first.kind, first.is_chief, first.num_workers, first.name) == ("multi-worker", True, 3, "worker0")
    mwms["task"] = {"type": "worker", "index": 2}
    assert not role(mwms).is_chief
    with_chief = cluster(chief=1, worker=2)
    with_chief["task"] = {"type": "worker", "index": 0}
    assert (role(with_chief).is_chief, role(with_chief).worker_index) == (False, 1)
    ps = cluster(chief=1, ps=1, worker=2)
    ps["task"] = {"type": "ps", "index": 0}
    assert role(ps).runs_server_only and not role(ps).is_chief
    ps["task"] = {"type": "chief", "index": 0}
    chief = role(ps)
    assert chief.is_chief and not chief.runs_server_only and chief.num_workers == 2
    ps["task"] = {"type": "worker", "index": 1}
    assert role(ps).chief == ps["cluster"]["chief"][0]  # the address a ps/worker server waits on
    assert resolve_role(plan_cluster(0, {}), "auto", 0).name == "local"


def reference_rate(step, peak, spe, total, warmup_epochs, schedule, step_epochs):
    warm = warmup_epochs * spe
    if warm and step < warm:
        return peak * (step + 1) / warm
    if schedule == "cosine":
        progress = min(max((step - warm) / max(total - warm, 1), 0.0), 1.0)
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return peak * 0.1 ** sum(step >= b * spe for b in step_epochs)
    return peak


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_learning_rate_schedule_matches_reference(schedule):
    from hpcvision.train.optim import learning_rate_at, scaled_learning_rate

    peak = scaled_learning_rate(0.1, 1024)
    assert peak == pytest.approx(0.4)
    args = dict(peak=peak, steps_per_epoch=10, total_steps=100, warmup_epochs=2, schedule=schedule,
                step_epochs=[3, 6])
    for step in [0, 5, 19, 20, 29, 30, 59, 60, 75, 99, 100]:
        got = float(learning_rate_at(step, **args))
        want = reference_rate(step, peak, 10, 100, 2, schedule, [3, 6])
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), step


def test_loss_with_label_smoothing_and_aux_head_matches_numpy():
    from hpcvision.train.optim import per_example_loss

    rng = np.random.default_rng(0)
    logits, aux = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    labels = np.array([0, 3, 4, 1], np.int32)

    def cross_entropy(z, smoothing):
        log_p = z - z.max(1, keepdims=True)
        log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
        target = np.eye(5)[labels] * (1 - smoothing) + smoothing / 5
        return -(target * log_p).sum(1)

    loss, main = per_example_loss([logits, aux], labels, num_classes=5, label_smoothing=0.1, aux_weight=0.3)
    expected = cross_entropy(logits, 0.1) + 0.3 * cross_entropy(aux, 0.1)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(main.numpy(), logits)
    plain, _ = per_example_loss(logits, labels, num_classes=5, label_smoothing=0.0, aux_weight=0.3)
    np.testing.assert_allclose(plain.numpy(), cross_entropy(logits, 0.0), rtol=1e-5)


def test_histogram_buckets_and_filter_grid():
    import keras

    from hpcvision.train.summaries import first_layer_filters, histogram_buckets

    values = np.random.default_rng(1).normal(size=1000)
    buckets = histogram_buckets(values, bins=20)
    assert buckets.shape == (20, 3) and buckets[:, 2].sum() == 1000
    assert buckets[0, 0] == values.min() and buckets[-1, 1] == values.max()
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(6, 5), keras.layers.Flatten()])
    grid = first_layer_filters(model)
    assert grid.ndim == 3 and grid.shape[2] == 3 and 0.0 <= grid.min() and grid.max() <= 1.0
    assert grid.min() == 0.0 and grid.max() == 1.0  # normalised over all kernels


def test_captioned_grid_writes_each_caption_under_its_image():
    from hpcvision.train.summaries import captioned_grid

    images = np.zeros((5, 8, 8, 3), np.uint8)  # black images: only a caption darkens the white strips
    grid = captioned_grid(images, ["coat", "", "sandal", "bag", ""], tile=32, columns=3)
    assert grid.shape == (2 * (32 + 16), 3 * 32, 3)
    strips = [grid[row * 48 + 32: row * 48 + 48, column * 32: (column + 1) * 32] for row in (0, 1) for column in (0, 1, 2)]
    assert [bool((strip < 128).any()) for strip in strips] == [True, False, True, True, False, False]
    assert (grid[:32, :32] == 0).all()  # the image itself, scaled


def test_wait_for_chief_exit_follows_the_chiefs_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    threading.Timer(1.0, server.close).start()
    started = time.monotonic()
    assert wait_for_chief_exit(address, misses=2, poll_s=0.2) == 0
    assert 1.0 <= time.monotonic() - started < 10
    # A chief that never comes: give up with a non-zero code instead of serving forever.
    assert wait_for_chief_exit(address, start_timeout_s=0.5, poll_s=0.1) == 1


def test_checkpoint_prefixes_newest_first(tmp_path):
    for step in (5, 100, 20):
        (tmp_path / f"ckpt-{step}.index").write_bytes(b"")
    (tmp_path / "ckpt-7.data-00000-of-00001").write_bytes(b"")  # no index: not a checkpoint
    assert ckpt_lib.checkpoint_prefixes(tmp_path) == [str(tmp_path / f"ckpt-{n}") for n in (100, 20, 5)]


def test_labels_from_manifest_are_zero_based():
    manifest = {"label_offset": 1, "labels": [{"label": 2, "wnid": "n2", "text": "b"},
                                              {"label": 1, "wnid": "n1", "text": "a"}]}
    labels = ckpt_lib.labels_from_manifest(manifest)
    assert labels == {"label_offset": 1, "classes": [{"index": 0, "wnid": "n1", "text": "a"},
                                                     {"index": 1, "wnid": "n2", "text": "b"}]}


def test_load_trained_model_needs_a_run(tmp_path):
    with pytest.raises(UserError, match="run.yaml: missing"):
        ckpt_lib.load_trained_model(tmp_path)


def test_tidy_lists_the_checkpoints_a_killed_save_left_out_of_the_state_file(tmp_path):
    import tensorflow as tf

    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))

    def manager(keep):
        return tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=keep, checkpoint_name="ckpt")

    first = manager(5)
    first.save(checkpoint_number=1)
    first.save(checkpoint_number=2)
    (tmp_path / "checkpoint").unlink()
    manager(5).save(checkpoint_number=3)  # a state file that lists only ckpt-3: 1 and 2 would stay forever
    ckpt_lib.tidy_checkpoint_dir(tmp_path)
    assert tf.train.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths == [
        str(tmp_path / f"ckpt-{n}") for n in (1, 2, 3)]
    written = (tmp_path / "checkpoint").stat().st_mtime_ns
    ckpt_lib.tidy_checkpoint_dir(tmp_path)  # nothing missing: not rewritten
    assert (tmp_path / "checkpoint").stat().st_mtime_ns == written
    manager(2).save(checkpoint_number=4)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-3.index", "ckpt-4.index"]


# --- the data a run reads: empty splits, the validation label map, --val-data (issue 10, items 6-7) ------

def _jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 20, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def _split(out, name, wnids, count=3):
    import train_records

    out.mkdir(parents=True, exist_ok=True)
    classes = [{"wnid": w, "text": w} for w in wnids]
    train_records.write_split(out, name, [(_jpeg(), i % len(wnids), 8, 8) for i in range(count)], classes, 1)
    return out


def _config(data, **kwargs):
    from hpcvision.train.config import TrainConfig

    return TrainConfig(data=str(data), checkpoint_dir=str(data / "run"), **kwargs)


def test_train_refuses_a_split_with_no_examples_in_one_line(run_cli, tmp_path):
    _split(tmp_path, "train", ["n1", "n2"], count=0)
    code, _, stderr = run_cli("train", "--data", tmp_path, "--checkpoint-dir", tmp_path / "run")
    assert code == 2 and "train-manifest.json: the 'train' split has 0 examples" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    _split(tmp_path, "train", ["n1", "n2"])
    _split(tmp_path, "validation", ["n1", "n2"], count=0)
    from hpcvision.train.inputs import describe_data

    with pytest.raises(UserError, match="the 'validation' split has 0 examples"):
        describe_data(_config(tmp_path))


def test_a_reordered_validation_split_is_refused_naming_both_manifests(tmp_path):
    from hpcvision.train.inputs import describe_data

    _split(tmp_path, "train", ["n1", "n2", "n3"])
    _split(tmp_path, "validation", ["n3", "n2", "n1"])
    with pytest.raises(UserError) as refused:
        describe_data(_config(tmp_path))
    assert str(refused.value) == (f"{tmp_path}/validation-manifest.json: label 1 is n3 here but n1 in "
                                  f"{tmp_path}/train-manifest.json")
    assert describe_data(_config(tmp_path, eval=False)).has_validation is False  # not evaluated, not read


def test_val_data_takes_validation_from_another_folder(tmp_path):
    from hpcvision.train.inputs import describe_data, eval_dataset

    train, val = _split(tmp_path / "train", "train", ["n1", "n2"]), _split(tmp_path / "val", "validation",
                                                                           ["n1", "n2"], count=5)
    assert describe_data(_config(train)).has_validation is False
    cfg = _config(train, val_data=str(val), batch_size=2)
    assert describe_data(cfg).has_validation is True
    assert sum(int(labels.shape[0]) for _, labels in eval_dataset(cfg, 8, num_workers=1, worker_index=0)) == 5
    with pytest.raises(UserError, match="no manifest"):
        describe_data(_config(train, val_data=str(tmp_path / "nothing")))


def test_the_layer_graph_of_a_model_with_auxiliary_heads_reads_in_tensorboard():
    import json

    from tensorboard.plugins.graph.keras_util import keras_model_to_graph_def

    from hpcvision.models import build_model

    graph = keras_model_to_graph_def(json.loads(build_model("googlenet", 5, 64, aux=True).to_json()))
    nodes = {node.name: list(node.input) for node in graph.node}
    assert nodes["googlenet/aux1_logits"] == ["googlenet/aux1_dropout"], nodes
    assert "googlenet/logits" in nodes and len(nodes) > 100


def test_auto_precision_reads_the_cpus_bfloat16_flags(tmp_path):
    from hpcvision.train.loop import cpu_has_bfloat16

    def cpu(flags: str) -> str:
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\nbugs\t\t: avx512_bf16_fake\n")
        return str(path)

    assert cpu_has_bfloat16(cpu("avx512f avx512_bf16"))
    assert cpu_has_bfloat16(cpu("amx_tile amx_bf16"))
    assert not cpu_has_bfloat16(cpu("avx512f avx512_vnni"))
    assert not cpu_has_bfloat16(str(tmp_path / "missing"))
