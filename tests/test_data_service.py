"""The input service (`data serve`, `train --data-service`): options, one pass shared out, and a local cluster of
a dispatcher, 2 service workers and 2 all-reduce trainers on 127.0.0.1."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from hpcvision.data import service
from hpcvision.errors import UserError


@pytest.mark.parametrize("text, expected", [("127.0.0.1:5050", ("127.0.0.1", 5050)),
                                            ("grpc://cpu-node-1:2222", ("cpu-node-1", 2222)),
                                            ("[::1]:80", ("[::1]", 80))])
def test_addresses(text, expected):
    assert service.parse_address(text) == expected


@pytest.mark.parametrize("text", ["5050", "host:", ":5050", "host:0", "host:65536", "host:port", "a/b:1",
                                  "http://h:1"])
def test_bad_addresses_name_the_option(text):
    with pytest.raises(UserError, match=f"--trainer '{re.escape(text)}': expected HOST:PORT"):
        service.parse_address(text, "--trainer")


def _outside_any_job() -> dict[str, str]:
    """This environment without a scheduler's, launcher's or hpcvision's variables: a process alone."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("SLURM_", "PBS_", "OMPI_", "PMI", "HPCVISION_")) and name != "TF_CONFIG"}


def test_bad_options_are_one_line_before_tensorflow_loads():
    """A fresh interpreter, so TensorFlow loaded by other tests does not hide an import."""
    check = ("import sys; from hpcvision.cli import main\n"
             "for argv in (['train', '--data', 'd', '--data-service', 'nohost'], ['data', 'serve', '--role', 'worker'],"
             " ['data', 'serve', '--role', 'dispatcher', '--dispatcher', 'h:1'],"
             " ['train', '--synthetic', '--num-classes', '2', '--data-service', 'h:1'],"
             " ['data', 'serve', '--port', '5'], ['data', 'serve', '--role', 'dispatcher', '--dry-run'],"
             " ['data', 'serve', '--trainer', 'nohost']):\n"
             "    assert main(argv) == 2, argv\n"
             "assert main(['data', 'serve', '--dry-run', '--trainer', 'none']) == 0\n"  # the plan needs no TensorFlow
             "assert 'tensorflow' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                            env=_outside_any_job())
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == ["hpcvision: error: --data-service 'nohost': expected HOST:PORT, e.g. 127.0.0.1:5050",
                      "hpcvision: error: data serve --role worker needs --dispatcher HOST:PORT",
                      "hpcvision: error: data serve --dispatcher is for --role worker (the dispatcher it "
                      "registers with)",
                      "hpcvision: error: --data-service makes batches from --data; it does not go with "
                      "--synthetic",
                      "hpcvision: error: data serve --role auto takes --dispatcher, --port and --host from the "
                      "cluster plan (ports from HPCVISION_BASE_PORT); give --role dispatcher|worker to set them "
                      "yourself",
                      "hpcvision: error: data serve --dry-run prints the plan of --role auto (the default)",
                      "hpcvision: error: --trainer 'nohost': expected HOST:PORT, e.g. 127.0.0.1:5050"], result.stderr


def test_dry_run_prints_this_ranks_plan(run_cli, monkeypatch):
    for name in set(os.environ) - set(_outside_any_job()):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HPCVISION_BASE_PORT", "6100")
    code, out, err = run_cli("data", "serve", "--dry-run", "--trainer", "none")
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["role"], shown["dispatcher"], shown["worker"], shown["trainer"]) == (
        "dispatcher", "127.0.0.1:6100", "127.0.0.1:6101", None)
    assert shown["why"] == "--trainer none: runs until signalled"


def test_run_yaml_does_not_keep_the_jobs_service():
    from hpcvision.train.checkpoint import recorded
    from hpcvision.train.config import TrainConfig

    assert recorded(TrainConfig(data="d", data_service="cpu-node-1:5050")).data_service is None


def test_a_worker_beside_a_remote_dispatcher_advertises_its_host_name():
    assert service.default_host("127.0.0.1:5050") == "127.0.0.1" and service.default_host(None) == "127.0.0.1"
    assert service.default_host("cpu-node-1:5050") not in service.LOCAL_HOSTS


def test_each_attempt_and_epoch_is_a_job_of_its_own():
    names = {service.job_name(attempt, epoch) for attempt in (0, 7, 2**24 - 1) for epoch in (0, 1)}
    assert len(names) == 6


def test_one_pass_shares_every_example_once_among_two_consumers(records):
    """Distributed-epoch mode: two consumers of one job, read in turn, get the 200 examples between them once."""
    import tensorflow as tf

    from hpcvision.data.pipeline import make_dataset

    dispatcher = service._start_dispatcher(0)
    where = f"127.0.0.1:{service._bound_port(dispatcher)}"
    workers = [service._start_worker(where, 0, "127.0.0.1") for _ in range(2)]
    try:
        dataset = make_dataset(records, "train", training=True, batch_size=10, image_size=16, seed=1, repeat=False)
        consumers = [iter(service.one_pass(dataset, where, service.job_name(1, 0))) for _ in range(2)]
        labels, shapes = [], set()
        while consumers:
            for consumer in list(consumers):
                try:
                    images, batch_labels = next(consumer)
                except (StopIteration, tf.errors.OutOfRangeError):
                    consumers.remove(consumer)
                    continue
                labels += batch_labels.numpy().tolist()
                shapes.add(tuple(images.shape))
        # What train reads: the same pass repeated; with --accumulate, N micro-batches per element.
        from hpcvision.train.config import TrainConfig
        from hpcvision.train.inputs import service_dataset_fn

        cfg = TrainConfig(data=str(records), data_service=where, batch_size=10, accumulate=2, seed=1)
        stacked = [tuple(images.shape) for images, _ in service_dataset_fn(cfg, 16, epoch=0, attempt=2)(None).take(12)]
    finally:
        for server in (*workers, dispatcher):
            server.stop()
    assert shapes == {(10, 16, 16, 3)}
    assert stacked == [(2, 10, 16, 16, 3)] * 12  # 12 x 20 > the 200 examples of one pass: repeated
    assert collections.Counter(labels) == {label: 20 for label in range(10)}  # 10 classes x 20 images


def _free_ports(count: int) -> list[int]:
    from hpcvision.cluster.launch import free_ports

    return free_ports(count)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.slow
def test_two_trainers_read_from_a_dispatcher_and_two_workers_that_exit_by_themselves(hpcvision_exe, records,
                                                                                     tmp_path):
    run = tmp_path / "run"
    dispatcher_port, *trainer_ports = _free_ports(3)
    trainers = [f"127.0.0.1:{port}" for port in trainer_ports]
    dispatcher = f"127.0.0.1:{dispatcher_port}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1")

    def start(args: list[str], **extra: str) -> subprocess.Popen:
        return subprocess.Popen([*hpcvision_exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=dict(env, **extra))

    # Trainers first, as a job script may start them: they wait for the dispatcher's port. A cluster all on
    # 127.0.0.1 finds it with auto at the base port.
    train = ["train", "--data", str(records), "--data-service", "auto", "--model", "small", "--image-size", "32",
             "--augment", "pad_crop", "--batch-size", "10", "--epochs", "2", "--log-every", "5",
             "--learning-rate", "0.4", "--seed", "1", "--checkpoint-dir", str(run)]
    processes = [start(train, HPCVISION_BASE_PORT=str(dispatcher_port),
                       TF_CONFIG=json.dumps({"cluster": {"worker": trainers}, "task": {"type": "worker", "index": i}}))
                 for i in range(2)]
    processes.append(start(["data", "serve", "--role", "dispatcher", "--port", str(dispatcher_port),
                            "--trainer", trainers[0]]))
    processes += [start(["data", "serve", "--role", "worker", "--dispatcher", dispatcher]) for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        _stop(processes)
    codes = [process.returncode for process in processes]
    assert codes == [0] * 5, "\n".join(f"--- {code}\n{out[-2000:]}" for code, out in zip(codes, outputs, strict=True))
    worker0, worker1, dispatched, *serving = outputs
    # 200 examples / global batch 20 = 10 steps an epoch; both trainers share each epoch's job.
    for out in (worker0, worker1):
        assert "multi-worker strategy, 2 replica(s), global batch 20, 10 steps/epoch, 20 steps" in out, out[-3000:]
    assert f"--data-service auto: the dispatcher at {dispatcher}" in worker0, worker0[-3000:]
    jobs = [re.findall(rf"training batches from the input service at {dispatcher}, job (\S+)", out)
            for out in (worker0, worker1)]
    assert len(jobs[0]) == 2 and jobs[0] == jobs[1] and jobs[0][0].endswith("epoch0"), jobs
    digests = [re.search(r"finished at step 20; weights sha256 (\w+)", out) for out in (worker0, worker1)]
    assert all(digests) and digests[0].group(1) == digests[1].group(1), worker1[-3000:]
    losses = [float(x) for x in re.findall(r"step \d+/20 epoch \S+ loss (\S+)", worker0)]
    assert len(losses) == 4 and all(0 < loss < 10 for loss in losses) and losses[-1] < losses[0], losses
    assert re.search(r"eval step 20: .*\(200 images\)", worker0), worker0[-3000:]  # evaluation stays local
    assert f"{trainers[0]} is gone; exiting" in dispatched, dispatched
    for out in serving:
        assert f"{dispatcher} is gone; exiting" in out, out
    # The service's address is the job's, not the run's: a resume runs with its own service.
    assert "data_service: null" in (run / "run.yaml").read_text()


@pytest.mark.slow
def test_sigterm_waits_for_running_trainers_but_ends_a_server_whose_trainers_are_not_up(hpcvision_exe):
    """At walltime the trainers save on SIGTERM and still need batches; a job script's clean-up after trainers
    that never started must not wait out --start-timeout."""
    import socket

    port, other_port, watched, never = _free_ports(4)
    listener = socket.create_server(("127.0.0.1", watched))  # stands in for the trainers' chief

    def dispatcher(listen: int, trainer: int) -> subprocess.Popen:
        return subprocess.Popen([*hpcvision_exe, "data", "serve", "--role", "dispatcher", "--port", str(listen),
                                 "--trainer", f"127.0.0.1:{trainer}"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))

    serving, waiting = processes = [dispatcher(port, watched), dispatcher(other_port, never)]
    try:
        for process in processes:
            assert process.stdout.readline().startswith("data serve: dispatcher at 127.0.0.1:")
            process.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=30) == 128 + signal.SIGTERM
        time.sleep(2)
        assert serving.poll() is None
        listener.close()
        assert serving.wait(timeout=30) == 0
        assert f"127.0.0.1:{watched} is gone; exiting" in serving.stdout.read()
    finally:
        listener.close()
        _stop(processes)


def _free_port_run(count: int) -> int:
    """A first port with `count` free ports from it on 127.0.0.1 (a service plan's base, base + 1, ...)."""
    import socket

    for first in (port for port in _free_ports(50) if port + count <= 65535):
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    pytest.fail(f"no {count} free ports in a row on 127.0.0.1")


@pytest.mark.slow
def test_two_planned_ranks_on_one_host_serve_and_exit_after_their_trainer(hpcvision_exe, tmp_path):
    """`data serve` (--role auto) as 2 ranks of a PBS-style launch on 127.0.0.1: rank 0 the dispatcher and a
    worker, rank 1 a worker on the next port; a pass read through them holds every element once."""
    import socket

    import tensorflow as tf

    base = _free_port_run(3)
    nodes = tmp_path / "service.nodes"
    nodes.write_text("127.0.0.1\n127.0.0.1\n")
    listener = socket.create_server(("127.0.0.1", 0))  # stands in for the trainers' chief
    trainer = f"127.0.0.1:{listener.getsockname()[1]}"
    env = dict(_outside_any_job(), TF_CPP_MIN_LOG_LEVEL="2", PBS_NODEFILE=str(nodes), PBS_JOBID="5.srv", OMPI_COMM_WORLD_SIZE="2",
               HPCVISION_BASE_PORT=str(base))

    def start(rank: int) -> list[str]:
        """Rank `rank` of the launch, started; its first two lines."""
        process = subprocess.Popen([*hpcvision_exe, "data", "serve", "--trainer", trainer], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=dict(env, OMPI_COMM_WORLD_RANK=str(rank)))
        processes.append(process)
        return [process.stdout.readline() for _ in range(2)]

    processes: list[subprocess.Popen] = []
    try:
        said = start(0)
        assert said == ["data serve: rank 0 of 2 (pbs): dispatcher; the trainers' chief given by --trainer\n",
                        f"data serve: dispatcher at 127.0.0.1:{base} with a worker at 127.0.0.1:{base + 1}, "
                        f"until {trainer} is gone\n"]
        # Rank 0's own worker makes a whole pass before rank 1 is up.
        served = tf.data.Dataset.range(40).apply(tf.data.experimental.service.distribute(
            processing_mode="distributed_epoch", service=f"grpc://127.0.0.1:{base}", job_name="planned"))
        assert sorted(int(x) for x in served) == list(range(40))
        said = start(1)
        assert said[1] == f"data serve: worker at 127.0.0.1:{base + 2}, until 127.0.0.1:{base} is gone\n", said
        listener.close()
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    finally:
        listener.close()
        _stop(processes)
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert f"{trainer} is gone; exiting" in outputs[0] and f"127.0.0.1:{base} is gone; exiting" in outputs[1]


@pytest.mark.slow
def test_benchmark_quick_runs_and_prints_the_ratio(run_benchmark, tmp_path):
    code, out, _ = run_benchmark("data_service", "--quick", "--workers", "1", "--cache-dir", tmp_path)
    assert code == 0, out
    assert re.search(r"^service: [\d,]+ img/s, trainer process [\d.]+ CPU-s per 1k images, service processes", out,
                     re.M), out
    assert re.search(r"^ratio service/local: trainer CPU per image [\d.]+, img/s [\d.]+", out, re.M), out
