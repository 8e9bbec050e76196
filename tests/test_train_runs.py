"""`hpcvision runs`: run folders written as train writes them (run.yaml, the checkpoint state file, TensorBoard
scalars through TensorFlow's own writer) read back without TensorFlow."""

from __future__ import annotations

import csv
import io
import statistics
import subprocess
import sys

import pytest

from hpcvision.train.checkpoint import synthetic_labels, write_run_files
from hpcvision.train.config import TrainConfig
from hpcvision.train.summaries import write_scalars

RUNS = {  # folder: (learning rate, batch size, validation top-1 per eval, img/s per report, newest checkpoint)
    "learning-rate=0.1,batch-size=32": (0.1, 32, [0.31, 0.52, 0.47], [810.0, 1000.0, 990.0, 1010.0], 300),
    "learning-rate=0.2,batch-size=32": (0.2, 32, [0.25, 0.41], [700.0, 905.5, 899.0], 200),
}


def make_run(folder, tf, learning_rate, batch_size, top1s, speeds, step):
    config = TrainConfig(data="rec", model="small", checkpoint_dir=str(folder), learning_rate=learning_rate,
                         batch_size=batch_size, deadline=f"+0{step // 100}:00:00")
    write_run_files(config, synthetic_labels(3), folder)
    for saved in (step - 100, step):
        (folder / f"ckpt-{saved}.index").touch()
    # A state file one save behind (a job killed between the index and the state file): a restart resumes
    # from the newest index all the same, and that is the step to show.
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{folder}/ckpt-{step - 100}"\n'
                                       f'all_model_checkpoint_paths: "{folder}/ckpt-{step - 100}"\n')
    for split, tag, values in (("eval", "top1", top1s), ("train", "images_per_sec/global", speeds)):
        writer = tf.summary.create_file_writer(str(folder / "logs" / split))
        for i, value in enumerate(values):
            write_scalars(writer, {tag: value, "loss": 2.0 - i}, step=(i + 1) * 100)
        writer.flush()


@pytest.fixture
def sweep(tmp_path):
    tf = pytest.importorskip("tensorflow")
    root = tmp_path / "sweep"
    for name, (lr, batch, top1s, speeds, step) in RUNS.items():
        make_run(root / name, tf, lr, batch, top1s, speeds, step)
    return root


def test_runs_table_as_csv(run_cli, sweep):
    code, out, err = run_cli("runs", sweep, "--csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    # learning rate differs; batch size, model... and the deadline/checkpoint folder (always differ) are left out
    assert rows[0] == ["run", "learning-rate", "step", "best_val_top1", "img_per_s"]
    expected = [[str(sweep / name), f"{lr:g}", str(step), f"{100 * max(top1s):.2f}", f"{statistics.median(speeds):.1f}"]
                for name, (lr, _, top1s, speeds, step) in RUNS.items()]
    assert rows[1:] == expected


def test_runs_table_for_a_terminal_and_a_partial_event_file(run_cli, sweep):
    first = sweep / next(iter(RUNS))
    events = next((first / "logs" / "eval").glob("events.out.tfevents.*"))
    with open(events, "ab") as f:
        f.write(b"\x10\x00\x00\x00")  # a record cut off mid-write (train still running)
    code, out, _ = run_cli("runs", first, sweep / list(RUNS)[1])
    assert code == 0
    header, one, two = out.splitlines()
    assert header.split() == ["run", "learning-rate", "step", "best_val_top1", "img_per_s"]
    assert one.split()[1:] == ["0.1", "300", "52.00", "995.0"]
    assert two.split()[1:] == ["0.2", "200", "41.00", "899.0"]
    assert header.index("step") + len("step") == one.index(" 300 ") + len(" 300")  # numbers line up on the right


def test_runs_does_not_import_tensorflow(sweep):
    code = ("import sys; from hpcvision.cli import main; rc = main(['runs', sys.argv[1]]); "
            "sys.exit(rc or 3 * any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "52.00" in result.stdout


def test_runs_of_a_folder_without_runs_is_one_line(run_cli, tmp_path):
    code, _, err = run_cli("runs", tmp_path)
    assert code == 2 and "no run.yaml in it or in its subfolders" in err and err.count("\n") == 1


def test_run_without_logs_or_checkpoints_has_empty_cells(run_cli, tmp_path):
    write_run_files(TrainConfig(data="rec", model="small"), synthetic_labels(2), tmp_path / "fresh")
    code, out, _ = run_cli("runs", tmp_path / "fresh", "--csv")
    assert code == 0 and out.splitlines()[1] == f"{tmp_path / 'fresh'},,,"
