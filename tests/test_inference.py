"""evaluate / export / predict / features / tensorboard against a checkpoint laid out as training writes it."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import train_records
from PIL import Image

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from hpcvision.cluster.launch import free_ports  # noqa: E402
from hpcvision.config import save_config  # noqa: E402
from hpcvision.models import register_model, registry  # noqa: E402

NUM_CLASSES = 8
IMAGE_SIZE = 24


def _tiny(num_classes: int, image_size: int, aux: bool = False):
    """A test-only network: small, standard layers, the registry's "logits" contract."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu", name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits", dtype="float32")(x), name="tiny_test")


@pytest.fixture(scope="module", autouse=True)
def tiny_model_registered():
    """Register the test network for this module only (other tests list the real zoo)."""
    register_model("tiny_test", image_size=IMAGE_SIZE)(_tiny)
    yield
    registry._REGISTRY.pop("tiny_test", None)


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _classes():
    return [{"index": i, "wnid": f"n0000000{i}", "text": f"thing {i}, kind {i}"} for i in range(NUM_CLASSES)]


def _write_split(out: Path, name: str, images: list[np.ndarray], labels: list[int], shards: int = 3) -> None:
    examples = [(_jpeg(image), label, *image.shape[:2]) for image, label in zip(images, labels, strict=True)]
    train_records.write_split(out, name, examples, _classes(), shards)


def _save_checkpoint(model, directory: Path, step: int) -> None:
    ckpt = tf.train.Checkpoint(model=model, step=tf.Variable(step, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=5, checkpoint_name="ckpt").save(checkpoint_number=step)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> dict[str, Path]:
    """Shards of 29 images in 8 classes, and a checkpoint dir with run.yaml, labels.json, 2 checkpoints."""
    from hpcvision.train.config import TrainConfig

    root = tmp_path_factory.mktemp("inference")
    data = root / "records"
    data.mkdir()
    rng = np.random.default_rng(1)
    labels = [i % NUM_CLASSES for i in range(29)]
    images = [np.clip(rng.normal(30 * c, 40, (30 + i % 5, 34, 3)), 0, 255) for i, c in enumerate(labels)]
    _write_split(data, "validation", images, labels)
    ckpt_dir = root / "run"
    ckpt_dir.mkdir()
    save_config(TrainConfig(data=str(data), model="tiny_test", image_size=IMAGE_SIZE, checkpoint_dir=str(ckpt_dir)),
                ckpt_dir / "run.yaml")
    (ckpt_dir / "labels.json").write_text(json.dumps({"label_offset": 1, "classes": _classes()}))
    keras.utils.set_random_seed(3)
    model = _tiny(NUM_CLASSES, IMAGE_SIZE)
    _save_checkpoint(model, ckpt_dir, 5)
    for layer in model.layers:  # the newest checkpoint holds different weights than the first
        for w in layer.weights:
            w.assign(w * 1.5 + 0.01)
    _save_checkpoint(model, ckpt_dir, 10)
    # What a job killed while saving step 15 leaves: temp files and a data file without its index.
    (ckpt_dir / "ckpt-15_temp").mkdir()
    (ckpt_dir / "ckpt-15_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 100)
    (ckpt_dir / "ckpt-15.data-00000-of-00001").write_bytes(b"\0" * 10)
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"img{i}.jpg").write_bytes(_jpeg(images[i]))
    Image.fromarray(images[3].astype(np.uint8)).save(photos / "img3.png")
    (photos / "broken.jpg").write_bytes(_jpeg(images[4])[:300])  # cut off mid-scan
    (photos / "notes.png").write_bytes(b"plain text, not an image")
    return {"data": data, "ckpt": ckpt_dir, "photos": photos, "root": root, "model": model}


@pytest.fixture(scope="module")
def checkpoint_classifier(run_dir):
    from hpcvision.infer.predict import from_checkpoint

    return from_checkpoint(run_dir["ckpt"])


def test_checkpoint_classifier_uses_the_newest_complete_checkpoint(checkpoint_classifier, run_dir):
    assert checkpoint_classifier.step == 10
    x = np.random.default_rng(0).normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    np.testing.assert_allclose(checkpoint_classifier.logits(x), run_dir["model"](x).numpy(), rtol=1e-5, atol=1e-5)


def test_evaluate_matches_numpy_recomputation(run_cli, run_dir, checkpoint_classifier):
    from hpcvision.data import pipeline
    from hpcvision.data.input_config import InputConfig

    out = run_dir["root"] / "eval"
    code, stdout, stderr = run_cli("evaluate", "--checkpoint-dir", run_dir["ckpt"], "--data", run_dir["data"],
                                   "--out", out, "--batch-size", 8)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # Independent reference: the same images through the model, ranked with plain NumPy.
    dataset = pipeline.make_dataset(run_dir["data"], "validation", InputConfig(central_fraction=0.875),
                                    training=False, batch_size=29, image_size=IMAGE_SIZE)
    images, labels = next(iter(dataset))
    logits, labels = run_dir["model"](images).numpy(), labels.numpy()
    ranked = np.argsort(-logits, axis=1)
    assert metrics["num_examples"] == 29
    assert metrics["top1"] == pytest.approx(np.mean(ranked[:, 0] == labels))
    assert metrics["top5"] == pytest.approx(np.mean([lab in row[:5] for lab, row in zip(labels, ranked, strict=True)]))
    assert metrics["checkpoint_step"] == 10
    wnid = _classes()[2]["wnid"]
    rows = labels == 2
    assert metrics["per_class"][wnid]["count"] == rows.sum()
    assert metrics["per_class"][wnid]["accuracy"] == pytest.approx(np.mean(ranked[rows, 0] == 2))
    assert metrics["per_class"][wnid]["text"] == "thing 2, kind 2"
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert np.load(out / "confusion_matrix.npy").sum() == 29
    logged = {}
    for events in (run_dir["ckpt"] / "logs" / "eval").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                logged[value.tag] = (event.step, value)
    assert logged["top1"][0] == 10
    assert float(tf.make_ndarray(logged["top1"][1].tensor)) == pytest.approx(metrics["top1"])
    assert logged["confusion_matrix"][1].metadata.plugin_data.plugin_name == "images"
    assert "top-1" in stdout


@pytest.fixture(scope="module")
def exported(run_dir):
    from hpcvision.infer.export import export_model

    out = run_dir["root"] / "export"
    export_model(run_dir["ckpt"], out)
    return out


def test_export_reload_gives_the_checkpoint_predictions(exported, run_dir, checkpoint_classifier):
    saved = tf.saved_model.load(str(exported))
    files = sorted(run_dir["photos"].glob("img*"))
    served = saved.signatures["serving_default"](tf.constant([f.read_bytes() for f in files]))
    expected = checkpoint_classifier.top_k(
        checkpoint_classifier.logits(np.stack([checkpoint_classifier.preprocess(f.read_bytes()) for f in files]))
    )
    for row, top in enumerate(expected):
        assert [c["index"] for c, _ in top] == served["labels"].numpy()[row].tolist()
        assert [c["wnid"].encode() for c, _ in top] == served["wnids"].numpy()[row].tolist()
        assert [c["text"].encode() for c, _ in top] == served["names"].numpy()[row].tolist()
        np.testing.assert_allclose([p for _, p in top], served["probabilities"].numpy()[row], atol=1e-5)
    # The pixel signature: resize + normalise only, as presets.preprocess_pixels does.
    pixels = np.random.default_rng(2).uniform(0, 255, (2, 40, 30, 3)).astype("float32")
    by_pixels = saved.signatures["serving_pixels"](tf.constant(pixels))
    from hpcvision.data.presets import preprocess_pixels

    probs = tf.nn.softmax(run_dir["model"](preprocess_pixels(pixels, IMAGE_SIZE))).numpy()
    np.testing.assert_allclose(np.sort(probs, axis=1)[:, ::-1][:, :5], by_pixels["probabilities"].numpy(), atol=1e-5)
    reloaded = keras.saving.load_model(exported / "model.keras")
    np.testing.assert_allclose(reloaded(pixels[:, :24, :24]).numpy(), run_dir["model"](pixels[:, :24, :24]).numpy(),
                               atol=1e-5)
    info = json.loads((exported / "export.json").read_text())
    assert info["step"] == 10 and info["image_size"] == IMAGE_SIZE


@pytest.mark.parametrize("source", ["checkpoint", "export"])
def test_predict_prints_names_and_reports_a_broken_image(run_cli, run_dir, exported, source):
    flag = ["--checkpoint-dir", run_dir["ckpt"]] if source == "checkpoint" else ["--model-path", exported]
    photos = run_dir["photos"]
    code, stdout, stderr = run_cli(
        "predict", *flag, photos / "img0.jpg", photos / "broken.jpg", photos / "img3.png", photos / "notes.png"
    )
    assert code == 1  # two images failed, the others were still predicted
    assert str(photos / "img0.jpg") in stdout and str(photos / "img3.png") in stdout
    assert stdout.count("thing ") == 10 and "n0000000" in stdout
    errors = [line for line in stderr.splitlines() if line.startswith("hpcvision: error:")]
    assert len(errors) == 2, stderr
    assert "broken.jpg: truncated or corrupt JPEG" in errors[0] and "notes.png: not a JPEG" in errors[1]
    assert "Traceback" not in stderr


def test_predict_from_export_agrees_with_checkpoint(run_cli, run_dir, exported):
    image = run_dir["photos"] / "img1.jpg"
    outputs = [run_cli("predict", *flag, image)[1] for flag in
               (["--checkpoint-dir", run_dir["ckpt"]], ["--model-path", exported])]
    assert outputs[0] == outputs[1]


def test_features_are_the_logits_layer_input(run_cli, run_dir, exported):
    out = run_dir["root"] / "features" / "f.npy"
    code, stdout, stderr = run_cli("features", run_dir["photos"], "--out", out, "--model-path", exported)
    assert code == 0, stderr
    names = (out.with_suffix(".txt")).read_text().split()
    assert names == ["img0.jpg", "img1.jpg", "img2.jpg", "img3.png"]  # broken.jpg, notes.png skipped
    assert "broken.jpg" in stderr and "notes.png" in stderr and "2 skipped" in stdout
    embeddings = np.load(out)
    assert embeddings.shape == (4, 16)
    from hpcvision.infer.predict import from_checkpoint

    classifier = from_checkpoint(run_dir["ckpt"])
    batch = np.stack([classifier.preprocess((run_dir["photos"] / n).read_bytes()) for n in names])
    model = run_dir["model"]
    reference = keras.Model(model.inputs[0], model.get_layer("embedding").output)(batch).numpy()
    np.testing.assert_allclose(embeddings, reference, atol=1e-5)


def test_missing_checkpoint_dir_is_one_line(run_cli, tmp_path):
    code, _, stderr = run_cli("predict", "--checkpoint-dir", tmp_path / "nope", tmp_path / "x.jpg")
    assert code == 2 and stderr.strip().startswith("hpcvision: error:") and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["evaluate", "predict", "features"])
def test_the_model_comes_from_exactly_one_of_checkpoint_dir_or_model_path(run_cli, tmp_path, command):
    rest = {"evaluate": ["--data", tmp_path, "--out", tmp_path], "predict": [tmp_path / "x.jpg"],
            "features": [tmp_path, "--out", tmp_path / "f.npy"]}[command]
    for source in ([], ["--checkpoint-dir", tmp_path, "--model-path", tmp_path]):  # neither, both
        with pytest.raises(SystemExit) as exit_:
            run_cli(command, *source, *rest)
        assert exit_.value.code == 2


def test_tensorboard_serves_on_loopback_url_first_and_quietly(hpcvision_exe, run_dir):
    port = free_ports(1)[0]
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.Popen([*hpcvision_exe, "tensorboard", str(run_dir["ckpt"]), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # blocks until the URL is printed (or the process dies)
        assert f"http://127.0.0.1:{port}/" in line, (line, proc.poll())
        deadline = time.time() + 30
        while True:
            try:
                for page in ("", "data/runs", "data/plugins_listing"):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=5) as response:
                        assert response.status == 200
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Before issue 12: TensorFlow's notices before the URL, a werkzeug line per request, the data server's log.
    err = proc.stderr.read()
    assert "GET /" not in err and "INFO" not in err and "fast data loading" not in err, err


def test_evaluate_an_export_gives_the_checkpoint_metrics(run_cli, run_dir, exported):
    results = []
    for flag in (["--checkpoint-dir", run_dir["ckpt"]], ["--model-path", exported]):
        out = run_dir["root"] / f"eval-{flag[0].strip('-')}"
        code, _, stderr = run_cli("evaluate", *flag, "--data", run_dir["data"], "--out", out)
        assert code == 0, stderr
        results.append(json.loads((out / "metrics.json").read_text()))
    assert results[0]["per_class"] == results[1]["per_class"]
    assert (results[0]["top1"], results[0]["top5"]) == (results[1]["top1"], results[1]["top5"])
    assert results[1]["checkpoint_step"] == 10


def test_a_run_yaml_written_before_the_input_section_still_loads(run_dir, tmp_path):
    """Old run.yaml files keep preprocessing options flat, null meaning the default; they still serve."""
    import shutil

    import yaml

    from hpcvision.infer.predict import from_checkpoint

    old = tmp_path / "old-run"
    shutil.copytree(run_dir["ckpt"], old)
    config = yaml.safe_load((old / "run.yaml").read_text())
    del config["input"]
    config.update({"augment": "pad_crop", "normalize": "unit", "flip": None, "pad": None, "area_range": None,
                   "aspect_ratio_range": None, "min_object_covered": None, "min_crop_size": None,
                   "central_fraction": None})
    (old / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    classifier = from_checkpoint(old)
    assert (classifier.normalize, classifier.central_fraction, classifier.step) == ("unit", 1.0, 10)
    photo = (run_dir["photos"] / "img0.jpg").read_bytes()
    from hpcvision.data.presets import preprocess_for_eval

    expected = preprocess_for_eval(tf.constant(photo), IMAGE_SIZE, normalize="unit", central_fraction=1.0)
    np.testing.assert_array_equal(classifier.preprocess(photo).numpy(), expected.numpy())


def _copy_of_run(run_dir, tmp_path, *, classes: int | None = None, model: str | None = None) -> Path:
    """A copy of the test run whose labels.json lists `classes` classes, or whose run.yaml names `model`."""
    import shutil

    import yaml

    copy = Path(shutil.copytree(run_dir["ckpt"], tmp_path / "other-run"))
    if classes is not None:
        labels = json.loads((copy / "labels.json").read_text())
        (copy / "labels.json").write_text(json.dumps(dict(labels, classes=labels["classes"][:classes])))
    if model is not None:
        config = yaml.safe_load((copy / "run.yaml").read_text())
        (copy / "run.yaml").write_text(yaml.safe_dump(dict(config, model=model, image_size=32), sort_keys=False))
    return copy


def test_a_checkpoint_of_another_model_is_refused_naming_what_differs(run_dir, tmp_path):
    """Every model variable must come from the checkpoint: no silent untrained model (issue 9, item 1)."""
    from hpcvision.errors import UserError
    from hpcvision.train.checkpoint import load_trained_model

    fewer = _copy_of_run(run_dir, tmp_path / "a", classes=5)
    with pytest.raises(UserError) as refused:
        load_trained_model(fewer)
    assert str(refused.value) == (f"{fewer}: ckpt-10 holds another model than run.yaml's tiny_test with 5 classes "
                                  "(logits/kernel has shape (16, 8) in the checkpoint, (16, 5) in the model)")
    other = _copy_of_run(run_dir, tmp_path / "b", model="resnet18")
    with pytest.raises(UserError) as refused:  # before: restored nothing, and served an untrained resnet18
        load_trained_model(other)
    assert str(refused.value) == (f"{other}: ckpt-10 holds another model than run.yaml's resnet18 with 8 classes "
                                  "(102 of the model's objects are not in the checkpoint)")


def test_export_of_another_models_checkpoint_is_one_line_and_writes_nothing(run_cli, run_dir, tmp_path):
    other = _copy_of_run(run_dir, tmp_path, model="small")
    code, _, stderr = run_cli("export", "--checkpoint-dir", other, "--out", tmp_path / "export")
    assert code == 2
    assert stderr.startswith(f"hpcvision: error: {other}: ckpt-10 holds another model than run.yaml's small")
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "export").exists()


def test_export_that_cannot_finish_is_one_line_and_leaves_no_half_export(run_cli, run_dir, tmp_path, monkeypatch):
    """A full disk mid-export (simulated: the .keras write fails after the SavedModel), and a real
    read-only --out where not root: one line, and OUT as it was (issue 9, item 7)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def disk_full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\0\0 half a zip")
        raise OSError(28, os.strerror(28))

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", disk_full)
        code, _, stderr = run_cli("export", "--checkpoint-dir", run_dir["ckpt"], "--out", out)
    assert (code, stderr.strip()) == (2, f"hpcvision: error: {out}: {os.strerror(28)}")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    code, _, stderr = run_cli("export", "--checkpoint-dir", run_dir["ckpt"], "--out", tmp_path / "new")
    assert code == 0 and (tmp_path / "new" / "export.json").is_file()
    if os.geteuid() != 0:  # root writes into a 0o555 folder anyway
        out.chmod(0o555)
        try:
            code, _, stderr = run_cli("export", "--checkpoint-dir", run_dir["ckpt"], "--out", out)
        finally:
            out.chmod(0o755)
        assert (code, len(stderr.strip().splitlines())) == (2, 1) and str(out) in stderr, stderr
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
