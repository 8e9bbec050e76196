"""Discovery and the cluster plan from fake PBS, Slurm, mpirun and TF_CONFIG environments (no processes started)."""

from __future__ import annotations

import json

import pytest

from hpcvision.cluster import plan, service_plan
from hpcvision.cluster.discovery import Task, discover, process_rank
from hpcvision.cluster.formats import expand_nodelist, expand_tasks_per_node, local_gpu_count
from hpcvision.cluster.plan import assign_roles, plan_cluster
from hpcvision.cluster.service_plan import ServicePlan, plan_service
from hpcvision.cluster.spec import (
    chief_address,
    chief_of,
    export_tf_config,
    is_chief,
    layout,
    load_tf_config,
    tf_config,
)
from hpcvision.errors import UserError

BASE = {"HPCVISION_BASE_PORT": "5000", "CUDA_VISIBLE_DEVICES": ""}


def no_mpi4py(env):
    """Stands in for the MPI allgather where mpi4py is not installed."""
    return None


def planned_tf_config(num_ps: int, env: dict, gather_hosts=no_mpi4py) -> dict | None:
    """The TF_CONFIG of this process's plan (None when it runs alone)."""
    return plan_cluster(num_ps, env, gather_hosts=gather_hosts).tf_config


def all_ranks(env: dict, size: int, rank_var: str, num_ps: int = 0, gather_hosts=no_mpi4py) -> list[dict]:
    """The TF_CONFIG as each rank of the job sees it."""
    return [planned_tf_config(num_ps, {**env, rank_var: str(r)}, gather_hosts) for r in range(size)]


def assert_consistent(configs: list[dict]) -> None:
    """Every rank computes the same cluster, and each (type, index) belongs to exactly one rank."""
    assert all(c["cluster"] == configs[0]["cluster"] for c in configs)
    roles = [(c["task"]["type"], c["task"]["index"]) for c in configs]
    assert len(set(roles)) == len(roles)
    expected = {(t, i) for t, addrs in configs[0]["cluster"].items() for i in range(len(addrs))}
    assert set(roles) == expected
    addresses = [a for addrs in configs[0]["cluster"].values() for a in addrs]
    assert len(set(addresses)) == len(addresses), "two tasks share host:port"


# ------------------------------------------------------------------------------ format parsers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("gpu01", ["gpu01"]),
        ("nid[00010-00012,00020],gpu01", ["nid00010", "nid00011", "nid00012", "nid00020", "gpu01"]),
        ("a[8-11]", ["a8", "a9", "a10", "a11"]),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
        ("c1,c2,node[3]", ["c1", "c2", "node3"]),
        ("host-a.example.org", ["host-a.example.org"]),
    ],
)
def test_expand_nodelist(text, expected):
    assert expand_nodelist(text) == expected


@pytest.mark.parametrize("text", ["nid[1-", "nid[a-b]", "nid[5-3]"])
def test_expand_nodelist_rejects_garbage(text):
    with pytest.raises(UserError, match="SLURM node list"):
        expand_nodelist(text)


@pytest.mark.parametrize(
    "text, expected", [("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,3(x2)", [1, 3, 3]), ("16(x1)", [16])]
)
def test_expand_tasks_per_node(text, expected):
    assert expand_tasks_per_node(text) == expected


def test_expand_tasks_per_node_rejects_garbage():
    with pytest.raises(UserError, match="tasks per node"):
        expand_tasks_per_node("2(3)")


# ------------------------------------------------------------------------------ process_rank


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (0, 1)),
        ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3"}, (2, 3)),
        ({"PMI_RANK": "1", "PMI_SIZE": "4"}, (1, 4)),
        ({"MV2_COMM_WORLD_RANK": "3", "MV2_COMM_WORLD_SIZE": "8"}, (3, 8)),
        ({"ALPS_APP_PE": "5", "PMI_SIZE": "6"}, (5, 6)),
        ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}, (1, 2)),
        # The batch script itself (outside srun) is one process, though SLURM_NTASKS says 4.
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, (0, 1)),
    ],
)
def test_process_rank(env, expected):
    assert process_rank(env) == expected


def test_process_rank_pbsdsh(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\n")
    assert process_rank({"PBS_NODEFILE": str(nodefile), "PBS_VNODENUM": "2"}) == (2, 3)


def test_process_rank_rejects_non_integer():
    with pytest.raises(UserError, match="OMPI_COMM_WORLD_RANK"):
        process_rank({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"})


# ------------------------------------------------------------------------------ PBS


@pytest.fixture
def pbs_env(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("n1.cluster\nn1.cluster\nn2.cluster\nn2.cluster\n")
    return {**BASE, "PBS_NODEFILE": str(nodefile), "PBS_JOBID": "77.pbs", "OMPI_COMM_WORLD_SIZE": "4"}


def test_pbs_nodefile_slots_become_workers_with_distinct_ports(pbs_env):
    configs = all_ranks(pbs_env, 4, "OMPI_COMM_WORLD_RANK")
    assert configs[0]["cluster"] == {
        "worker": ["n1.cluster:5000", "n1.cluster:5001", "n2.cluster:5000", "n2.cluster:5001"]
    }
    assert [c["task"] for c in configs] == [{"type": "worker", "index": r} for r in range(4)]
    assert_consistent(configs)


def test_pbs_fewer_ranks_than_slots_fill_the_first_host_first(pbs_env):
    env = {**pbs_env, "OMPI_COMM_WORLD_SIZE": "3"}
    config = planned_tf_config(0, {**env, "OMPI_COMM_WORLD_RANK": "2"})
    assert config["cluster"]["worker"] == ["n1.cluster:5000", "n1.cluster:5001", "n2.cluster:5000"]


def test_pbs_interleaved_nodefile_is_grouped_by_host(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("a\nb\na\nb\n")
    env = {**BASE, "PBS_NODEFILE": str(nodefile), "PMI_SIZE": "4"}
    config = planned_tf_config(0, {**env, "PMI_RANK": "1"})
    assert config["cluster"]["worker"] == ["a:5000", "a:5001", "b:5000", "b:5001"]


def test_pbs_pbsdsh_rank(pbs_env):
    env = {k: v for k, v in pbs_env.items() if not k.startswith("OMPI")}
    found = discover({**env, "PBS_VNODENUM": "3"})
    assert (found.scheduler, found.rank, found.size) == ("pbs", 3, 4)
    assert found.tasks[3] == Task("n2.cluster", 1, 0)


def test_pbs_batch_script_outside_launcher_is_one_process(pbs_env):
    env = {k: v for k, v in pbs_env.items() if not k.startswith("OMPI")}
    assert planned_tf_config(0, env) is None
    assert "not started by a launcher" in discover(env).notes[0]


def test_pbs_gpufile_puts_ps_on_the_cpu_node(tmp_path):
    nodefile, gpufile = tmp_path / "nodes", tmp_path / "gpus"
    nodefile.write_text("gpu01\ngpu01\ncpu01\ngpu02\ngpu02\n")
    gpufile.write_text("gpu01-gpu0\ngpu01-gpu1\ngpu02-gpu0\ngpu02-gpu1\n")
    env = {**BASE, "PBS_NODEFILE": str(nodefile), "PBS_GPUFILE": str(gpufile), "OMPI_COMM_WORLD_SIZE": "5"}
    configs = all_ranks(env, 5, "OMPI_COMM_WORLD_RANK", num_ps=1)
    assert configs[2]["task"] == {"type": "ps", "index": 0}  # rank 2 is the one on cpu01
    assert configs[0]["cluster"]["ps"] == ["cpu01:5000"]
    assert all(a.startswith("gpu") for a in configs[0]["cluster"]["worker"])
    assert_consistent(configs)


def test_pbs_missing_nodefile_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read PBS_NODEFILE"):
        discover({"PBS_NODEFILE": str(tmp_path / "absent"), "PMI_RANK": "0", "PMI_SIZE": "2"})


def test_pbs_more_ranks_than_slots_is_a_user_error(pbs_env):
    with pytest.raises(UserError, match="5 ranks but the node file holds 4"):
        discover({**pbs_env, "OMPI_COMM_WORLD_SIZE": "5", "OMPI_COMM_WORLD_RANK": "0"})


# ------------------------------------------------------------------------------ Slurm


def slurm_env(nodelist: str, per_node: str, ntasks: int, **extra: str) -> dict:
    return {
        **BASE,
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_STEP_TASKS_PER_NODE": per_node,
        "SLURM_STEP_NUM_TASKS": str(ntasks),
        "SLURM_NTASKS": str(ntasks),
        **extra,
    }


def test_slurm_cpu_only_nodes_block_distribution():
    env = slurm_env("nid[00010-00012,00020]", "2(x3),1", 7)
    configs = all_ranks(env, 7, "SLURM_PROCID")
    expected_hosts = ["nid00010"] * 2 + ["nid00011"] * 2 + ["nid00012"] * 2 + ["nid00020"]
    expected_ports = [5000, 5001] * 3 + [5000]
    assert configs[0]["cluster"]["worker"] == [f"{h}:{p}" for h, p in zip(expected_hosts, expected_ports, strict=True)]
    assert_consistent(configs)
    assert all(t.host_gpus == 0 for t in discover({**env, "SLURM_PROCID": "0"}).tasks)


def test_slurm_gpus_per_task_zero_does_not_crash():
    # TF's SlurmClusterResolver divides by gpus_per_task here.
    env = slurm_env("cpu[1-2]", "1(x2)", 2, SLURM_GPUS_PER_TASK="0")
    configs = all_ranks(env, 2, "SLURM_PROCID")
    assert configs[1]["cluster"] == {"worker": ["cpu1:5000", "cpu2:5000"]}


@pytest.mark.parametrize("value, gpus", [("4", 4), ("a100:4", 4), ("gpu:a100:2", 2), ("0", 0)])
def test_slurm_gpus_per_node_formats(value, gpus):
    env = slurm_env("g[1-2]", "1(x2)", 2, SLURM_GPUS_PER_NODE=value, SLURM_PROCID="0")
    assert [t.host_gpus for t in discover(env).tasks] == [gpus, gpus]


def test_slurm_mixed_nodes_ps_first_on_gpu_less_hosts():
    env = slurm_env("cpu[01-02],gpu[01-02]", "1(x2),2(x2)", 6, HPCVISION_GPUS="gpu01=2,gpu02=2,cpu01=0,cpu02=0")
    configs = all_ranks(env, 6, "SLURM_PROCID", num_ps=1)
    assert configs[0]["cluster"]["ps"] == ["cpu01:5000"]
    assert configs[0]["cluster"]["chief"] == ["cpu02:5000"]
    assert configs[0]["cluster"]["worker"] == ["gpu01:5000", "gpu01:5001", "gpu02:5000", "gpu02:5001"]
    assert_consistent(configs)


def test_slurm_tasks_per_node_mismatch_is_a_user_error():
    env = slurm_env("a[1-3]", "2(x2)", 4, SLURM_PROCID="0")
    with pytest.raises(UserError, match="3 hosts"):
        discover(env)


def test_slurm_ntasks_mismatch_is_a_user_error():
    env = slurm_env("a[1-2]", "2(x2)", 3, SLURM_PROCID="0")
    with pytest.raises(UserError, match="add up to 4"):
        discover(env)


def test_slurm_non_integer_localid_is_a_user_error():
    env = slurm_env("n[1-2]", "1(x2)", 2, SLURM_PROCID="0", SLURM_LOCALID="x")
    with pytest.raises(UserError, match="SLURM_LOCALID='x' is not an integer"):
        discover(env)


def test_mpi_non_integer_local_size_is_a_user_error():
    env = {**BASE, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "two"}
    with pytest.raises(UserError, match="OMPI_COMM_WORLD_LOCAL_SIZE='two' is not an integer"):
        planned_tf_config(0, env)


def test_slurm_batch_script_outside_srun_is_one_process():
    env = slurm_env("a[1-2]", "2(x2)", 4, SLURM_PROCID="0")
    del env["SLURM_STEP_NUM_TASKS"], env["SLURM_STEP_NODELIST"], env["SLURM_STEP_TASKS_PER_NODE"]
    assert planned_tf_config(0, env) is None
    assert "not in an srun step" in discover(env).notes[0]


def test_mpirun_inside_a_slurm_allocation_trusts_mpi_ranks():
    # Ranks started by mpirun inherit the batch step's SLURM_PROCID=0: mpirun's ranks must win.
    env = slurm_env("a1", "2", 2, SLURM_PROCID="0", OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="2")
    found = discover(env, gather_hosts=lambda env: [("a1", 0), ("a1", 0)])
    assert (found.scheduler, found.rank) == ("mpi", 1)


def test_slurm_job_id_derives_the_same_base_port_on_every_rank():
    env = slurm_env("a[1-2]", "1(x2)", 2)
    del env["HPCVISION_BASE_PORT"]
    configs = all_ranks(env, 2, "SLURM_PROCID")
    assert_consistent(configs)
    port = int(configs[0]["cluster"]["worker"][0].rsplit(":", 1)[1])
    assert port == 20000 + (4242 % 600) * 64
    other_job = planned_tf_config(0, {**env, "SLURM_JOB_ID": "4243", "SLURM_PROCID": "0"})
    assert other_job["cluster"] != configs[0]["cluster"]


def test_pbs_array_subjobs_derive_base_ports_of_their_own():
    ports = [plan.base_port({}, job_id) for job_id in ("4711.srv", "4711[0].srv", "4711[1].srv", "4711[2].srv")]
    assert ports[0] == ports[1] == 20000 + (4711 % 600) * 64
    assert len(set(ports[1:])) == 3  # sweep points sharing a node do not collide


# ------------------------------------------------------------------------------ MPI, TF_CONFIG, local


def test_mpi_allgather_hosts():
    gathered = [("a", 0), ("b", 2), ("a", 0), ("b", 2)]
    calls = []

    def gather(env):
        calls.append(env["OMPI_COMM_WORLD_RANK"])
        return gathered

    env = {**BASE, "OMPI_COMM_WORLD_SIZE": "4"}
    configs = all_ranks(env, 4, "OMPI_COMM_WORLD_RANK", num_ps=1, gather_hosts=gather)
    assert configs[0]["cluster"] == {"ps": ["a:5000"], "chief": ["a:5001"], "worker": ["b:5000", "b:5001"]}
    assert configs[2]["task"] == {"type": "chief", "index": 0}
    assert_consistent(configs)
    # A collective: one allgather per process's plan, or the ranks would wait on each other forever.
    assert calls == ["0", "1", "2", "3"]


def test_mpi_without_mpi4py_on_one_host_uses_this_host():
    env = {**BASE, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert len(planned_tf_config(0, env)["cluster"]["worker"]) == 2


def test_mpi_without_mpi4py_across_hosts_is_a_user_error():
    env = {**BASE, "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    with pytest.raises(UserError, match="mpi4py"):
        planned_tf_config(0, env)


def test_tf_config_wins_over_scheduler(pbs_env):
    explicit = {"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}
    env = {**pbs_env, "OMPI_COMM_WORLD_RANK": "0", "TF_CONFIG": json.dumps(explicit)}
    assert planned_tf_config(1, env) == explicit
    assert discover(env).scheduler == "tf_config"


@pytest.mark.parametrize("raw, match", [("{", "not valid JSON"), ('{"cluster": {}}', "'cluster' and 'task'"),
                                        ('{"cluster": {"worker": []}, "task": {"type": "ps"}}', "names no job"),
                                        ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker"}}', "host:port"),
                                        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
                                         "not in the cluster")])
def test_bad_tf_config_is_a_user_error(raw, match):
    with pytest.raises(UserError, match=match):
        planned_tf_config(0, {"TF_CONFIG": raw})


def test_explicit_tf_config_wins_in_train_a_forced_source_wins_in_show(pbs_env):
    explicit = {"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}
    env = {**pbs_env, "OMPI_COMM_WORLD_RANK": "0", "TF_CONFIG": json.dumps(explicit), "HPCVISION_DISCOVERY": "pbs"}
    assert planned_tf_config(0, env) == explicit  # `hpcvision launch` children inherit both variables
    assert plan.describe(0, env)["scheduler"] == "pbs"
    assert plan.describe(0, {**env, "HPCVISION_DISCOVERY": "auto"})["tf_config"] == explicit


def test_alone_means_no_tf_config():
    assert planned_tf_config(0, {"CUDA_VISIBLE_DEVICES": ""}) is None
    assert discover({"CUDA_VISIBLE_DEVICES": ""}).scheduler == "local"


# ------------------------------------------------------------------------------ roles


def test_ps_needs_room_for_chief_and_a_worker():
    tasks = [Task("h", i, 0) for i in range(3)]
    assert [r[0] for r in assign_roles(tasks, 1)] == ["ps", "chief", "worker"]
    with pytest.raises(UserError, match="at least 4 tasks"):
        assign_roles(tasks, 2)


def test_two_ps_spread_over_cpu_hosts_before_gpu_hosts():
    tasks = [Task("g1", 0, 4), Task("c1", 0, 0), Task("g2", 0, 4), Task("c2", 0, 0), Task("g3", 0, 4)]
    roles = assign_roles(tasks, 2)
    # No GPU-less slot is left for the chief: it takes the first GPU task.
    assert roles == [("chief", 0), ("ps", 0), ("worker", 0), ("ps", 1), ("worker", 1)]


def test_ps_take_one_slot_per_cpu_host_before_a_second():
    tasks = [Task("c1", 0, 0), Task("c1", 1, 0), Task("c2", 0, 0), Task("g1", 0, 2), Task("g1", 1, 2)]
    roles = assign_roles(tasks, 2)
    assert roles == [("ps", 0), ("chief", 0), ("ps", 1), ("worker", 0), ("worker", 1)]


def test_one_chief_rule():
    assert layout(2, 0) == [("worker", 0), ("worker", 1)]
    assert layout(2, 1) == [("chief", 0), ("ps", 0), ("worker", 0), ("worker", 1)]
    workers_only, with_chief = {"worker": ["a:1", "b:1"]}, {"chief": ["c:1"], "worker": ["a:1"]}
    assert chief_of(workers_only) == ("worker", 0) and chief_of(with_chief) == ("chief", 0)
    assert is_chief("worker", 0, workers_only) and not is_chief("worker", 0, with_chief)
    assert chief_address(with_chief) == "c:1" and chief_address({}) is None


def test_exported_tf_config_reads_back():
    env: dict[str, str] = {}
    export_tf_config(tf_config({"worker": ["a:1", "b:1"]}, "worker", 1), env)
    assert load_tf_config(env) == {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}


def test_plan_of_a_discovered_ps_job(pbs_env):
    found = plan_cluster(1, {**pbs_env, "OMPI_COMM_WORLD_RANK": "2"})
    assert found.roles == (("ps", 0), ("worker", 0), ("chief", 0), ("worker", 1))
    assert (found.task_type, found.task_index, found.is_chief) == ("chief", 0, True)
    assert found.chief == "n2.cluster:5000" and found.base_port == 5000
    assert found.tf_config["task"] == {"type": "chief", "index": 0}
    worker = plan_cluster(1, {**pbs_env, "OMPI_COMM_WORLD_RANK": "1"})
    assert (worker.task_type, worker.is_chief, worker.chief) == ("worker", False, "n2.cluster:5000")
    alone = plan_cluster(1, {"CUDA_VISIBLE_DEVICES": ""})
    assert (alone.tf_config, alone.is_chief, alone.roles, alone.base_port) == (None, True, (("worker", 0),), None)


def test_bad_base_port_is_a_user_error():
    with pytest.raises(UserError, match="HPCVISION_BASE_PORT"):
        plan.base_port({"HPCVISION_BASE_PORT": "80"})


def test_local_gpu_count_respects_cuda_visible_devices():
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": "0,1,3"}) == 3
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": "-1"}) == 0
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": ""}) == 0


# ------------------------------------------------------------------------------ the command


def test_cluster_show_prints_role_and_tf_config(run_cli, monkeypatch, pbs_env):
    for key, value in {**pbs_env, "OMPI_COMM_WORLD_RANK": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code, out, _ = run_cli("cluster", "show", "--ps", "1", "--port", "6000")
    assert code == 0
    shown = json.loads(out)
    assert shown["scheduler"] == "pbs" and shown["rank"] == 2 and shown["ranks"] == 4
    # ps takes n1's first slot; the chief the next host's first slot (rank 2).
    assert shown["role"] == {"type": "chief", "index": 0}
    assert shown["tf_config"]["cluster"]["ps"] == ["n1.cluster:6000"]
    assert shown["hosts"] == [{"host": "n1.cluster", "tasks": 2, "gpus": 0}, {"host": "n2.cluster", "tasks": 2, "gpus": 0}]


def test_cluster_show_bad_ps_is_one_line_error(run_cli, monkeypatch, pbs_env):
    for key, value in {**pbs_env, "OMPI_COMM_WORLD_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code, _, err = run_cli("cluster", "show", "--ps", "3")
    assert code == 2
    assert err.startswith("hpcvision: error: --ps 3 needs at least 5 tasks")


def test_visible_gpus_one_task_per_gpu_and_none_for_ps():
    env = slurm_env("cpu01,gpu[01-02]", "1,2(x2)", 5, HPCVISION_GPUS="cpu01=0,gpu01=2,gpu02=2")
    del env["CUDA_VISIBLE_DEVICES"]
    shown = [plan.describe(1, {**env, "SLURM_PROCID": str(r)}) for r in range(5)]
    assert [s["role"]["type"] for s in shown] == ["ps", "chief", "worker", "worker", "worker"]
    # ps on cpu01: no GPU; the PS chief took gpu01's slot 0 but needs none; workers one GPU each.
    assert [s["cuda_visible_devices"] for s in shown] == ["", "", "1", "0", "1"]
    bound = plan.describe(1, {**env, "SLURM_PROCID": "2", "CUDA_VISIBLE_DEVICES": "3"})
    assert bound["cuda_visible_devices"] is None  # the scheduler's binding is kept


# ------------------------------------------------------------------------------ issue 13: GPUs, Torque, het jobs


def test_inherited_multi_gpu_list_is_split_by_local_rank():
    # Slurm without --gpus-per-task/--gpu-bind hands every task of a 4-GPU node the same four GPUs.
    env = slurm_env("g[1-2]", "4(x2)", 8, SLURM_GPUS_PER_NODE="4", CUDA_VISIBLE_DEVICES="0,1,2,3")
    shown = [plan.describe(0, {**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r % 4)}) for r in range(8)]
    assert [s["cuda_visible_devices"] for s in shown] == ["0", "1", "2", "3"] * 2
    assert "given to all 4 tasks on g1: local rank 2 takes 2" in shown[2]["gpu_binding"]
    # Eight GPUs for four tasks: two each; a list that does not split evenly is kept and said so.
    two = plan.describe(0, {**env, "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    assert two["cuda_visible_devices"] == "2,3"
    uneven = plan.describe(0, {**env, "SLURM_PROCID": "1", "CUDA_VISIBLE_DEVICES": "0,1,2"})
    assert uneven["cuda_visible_devices"] is None and "does not split evenly" in uneven["gpu_binding"]
    bound = plan.describe(0, {**env, "SLURM_PROCID": "1", "CUDA_VISIBLE_DEVICES": "1"})
    assert bound["cuda_visible_devices"] is None and "set by the launcher: kept" in bound["gpu_binding"]
    # A parameter server holds no GPU even when the launcher gave it some.
    ps = plan.describe(1, {**env, "SLURM_PROCID": "0"})
    assert ps["role"]["type"] == "ps" and ps["cuda_visible_devices"] == ""


def torque_env(tmp_path, hosts: int, ppn: int, ranks: int, **extra: str) -> dict:
    nodefile = tmp_path / "torque-nodes"
    nodefile.write_text("".join(f"n{h}\n" * ppn for h in range(1, hosts + 1)))
    return {**BASE, "PBS_NODEFILE": str(nodefile), "PBS_JOBID": "12.torque", "OMPI_COMM_WORLD_SIZE": str(ranks),
            **extra}


def test_torque_nodefile_spreads_tasks_per_node_and_warns_when_one_host_gets_all(tmp_path):
    # nodes=4:ppn=16 lists each host 16 times; mpirun --map-by ppr:4:node starts 4 ranks on each.
    env = torque_env(tmp_path, 4, 16, 16, HPCVISION_TASKS_PER_NODE="4")
    configs = all_ranks(env, 16, "OMPI_COMM_WORLD_RANK")
    assert configs[0]["cluster"]["worker"] == [f"n{h}:{5000 + i}" for h in range(1, 5) for i in range(4)]
    assert_consistent(configs)
    found = discover({**env, "OMPI_COMM_WORLD_RANK": "5"})
    assert found.tasks[5] == Task("n2", 1, 0)
    assert any("HPCVISION_TASKS_PER_NODE=4: ranks per host n1 4" in n for n in found.notes)
    # Cores per task (mixed Torque jobs): a host listed 8 times with 4 cores a task runs 2 ranks.
    cores = discover({**torque_env(tmp_path, 2, 8, 4, HPCVISION_CORES_PER_TASK="4"), "OMPI_COMM_WORLD_RANK": "0"})
    assert [h["tasks"] for h in cores.hosts()] == [2, 2]
    # Without either variable all 16 ranks fill n1: cluster show says so.
    blind = plan.describe(0, {**torque_env(tmp_path, 4, 16, 16), "OMPI_COMM_WORLD_RANK": "0"})
    assert blind["hosts"] == [{"host": "n1", "tasks": 16, "gpus": 0}]
    assert any("all 16 ranks are on n1 though the job has 4 hosts" in n for n in blind["notes"])
    with pytest.raises(UserError, match="HPCVISION_TASKS_PER_NODE='x'"):
        discover({**env, "HPCVISION_TASKS_PER_NODE": "x", "OMPI_COMM_WORLD_RANK": "0"})


def het_env(**extra: str) -> dict:
    """A heterogeneous Slurm job: 2 CPU nodes (3 tasks: ps, ps, chief) + 2 GPU nodes with 2 GPUs and 2 tasks each."""
    return {
        **BASE, "SLURM_JOB_ID": "900", "SLURM_HET_SIZE": "2",
        "SLURM_JOB_NODELIST": "cpu[01-02],gpu[01-02]", "SLURM_STEP_NODELIST": "cpu[01-02],gpu[01-02]",
        "SLURM_STEP_NUM_TASKS": "7",
        "SLURM_JOB_NODELIST_HET_GROUP_0": "cpu[01-02]", "SLURM_TASKS_PER_NODE_HET_GROUP_0": "2,1",
        "SLURM_JOB_NODELIST_HET_GROUP_1": "gpu[01-02]", "SLURM_TASKS_PER_NODE_HET_GROUP_1": "2(x2)",
        "SLURM_GPUS_PER_NODE_HET_GROUP_1": "a100:2", **extra,
    }


def test_slurm_heterogeneous_job_cpu_component_holds_the_ps_and_chief():
    configs = all_ranks(het_env(), 7, "SLURM_PROCID", num_ps=2)
    assert configs[0]["cluster"] == {"ps": ["cpu01:5000", "cpu02:5000"], "chief": ["cpu01:5001"],
                                     "worker": ["gpu01:5000", "gpu01:5001", "gpu02:5000", "gpu02:5001"]}
    assert_consistent(configs)
    found = discover({**het_env(), "SLURM_PROCID": "4"})
    assert found.hosts() == [{"host": "cpu01", "tasks": 2, "gpus": 0}, {"host": "cpu02", "tasks": 1, "gpus": 0},
                             {"host": "gpu01", "tasks": 2, "gpus": 2}, {"host": "gpu02", "tasks": 2, "gpus": 2}]
    assert "components 0,1 with 3 + 4 tasks" in found.notes[0]
    worker = plan.describe(2, {**het_env(CUDA_VISIBLE_DEVICES="0,1"), "SLURM_PROCID": "4", "SLURM_LOCALID": "1"})
    assert worker["role"] == {"type": "worker", "index": 1} and worker["cuda_visible_devices"] == "1"
    # A step in one component only (srun --het-group=1): its own SLURM_STEP_* describe it.
    one = {**het_env(), "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
           "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3"}
    assert [t.host for t in discover(one).tasks] == ["gpu01", "gpu01", "gpu02", "gpu02"]
    # HPCVISION_HET_GROUPS (set by job scripts) names the components; a missing one is one line.
    with pytest.raises(UserError, match="SLURM_JOB_NODELIST_HET_GROUP_2 is not set"):
        discover({**het_env(HPCVISION_HET_GROUPS="0,2"), "SLURM_PROCID": "0"})


# ------------------------------------------------------------------------------ the input service's plan

MIXED_GPUS = "cpu01=0,cpu02=0,gpu01=4,gpu02=4"  # what a mixed job's script tells every rank


def service_ranks(env: dict, size: int, rank_env, trainer: str | None = None) -> list[ServicePlan]:
    """The service plan as each rank of a launch sees it: `env` plus what its launcher sets (`rank_env(rank)`)."""
    return [plan_service({**env, **rank_env(r)}, trainer, gather_hosts=no_mpi4py) for r in range(size)]


def test_service_step_of_a_slurm_heterogeneous_job_serves_from_the_cpu_component():
    env = {**het_env(HPCVISION_HET_GROUPS="0", HPCVISION_GPUS=MIXED_GPUS), "SLURM_TASKS_PER_NODE_HET_GROUP_0": "1(x2)",
           "SLURM_STEP_NODELIST": "cpu[01-02]", "SLURM_STEP_NUM_TASKS": "2"}
    first, second = service_ranks(env, 2, lambda r: {"SLURM_PROCID": str(r)})
    assert (first.role, first.host, first.dispatcher, first.worker_port) == ("dispatcher", "cpu01", "cpu01:5000", 5001)
    assert first.trainer == "gpu01:5000" and "first GPU host in HPCVISION_GPUS" in first.why
    assert (second.role, second.host, second.dispatcher, second.worker_port) == ("worker", "cpu02", "cpu01:5000", 5001)
    assert second.trainer is None and second.describe()["trainer"] is None
    # The trainers (component 1) watch nothing themselves but find the dispatcher from the same facts.
    assert service_plan.dispatcher_address(discover({**env, "SLURM_PROCID": "0"}), env)[0] == "cpu01:5000"


def test_service_ranks_sharing_a_host_take_ports_of_their_own(tmp_path):
    nodes = tmp_path / "service.nodes"
    nodes.write_text("cpu01\ncpu01\ncpu02\n")
    env = {**BASE, "PBS_NODEFILE": str(nodes), "PBS_JOBID": "4711.srv"}
    ranks = service_ranks(env, 3, lambda r: {"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": "3"})
    servers = [f"{p.host}:{p.worker_port}" for p in ranks] + [ranks[0].dispatcher]
    assert servers == ["cpu01:5001", "cpu01:5002", "cpu02:5001", "cpu01:5000"]
    assert [p.role for p in ranks] == ["dispatcher", "worker", "worker"]
    # No GPU host named: nothing to watch, the dispatcher runs until signalled (the job's exit trap ends it).
    assert ranks[0].trainer is None and "runs until signalled" in ranks[0].why


def test_a_lone_service_is_a_dispatcher_and_worker_on_loopback():
    alone = plan_service({"HPCVISION_BASE_PORT": "6000", "CUDA_VISIBLE_DEVICES": ""})
    assert alone.describe() | {"hosts": None} == {
        "scheduler": "local", "job_id": None, "rank": 0, "ranks": 1, "role": "dispatcher", "worker": "127.0.0.1:6001",
        "dispatcher": "127.0.0.1:6000", "trainer": None, "hosts": None, "notes": [],
        "why": "HPCVISION_GPUS names no GPU host (host=N), so no trainers' chief to watch: runs until signalled"}
    trainer = plan_service({"CUDA_VISIBLE_DEVICES": ""}, "127.0.0.1:7000")
    assert (trainer.trainer, trainer.why, trainer.port) == ("127.0.0.1:7000", "the trainers' chief given by --trainer",
                                                      plan.DEFAULT_BASE_PORT)
    # A single trainer runs no TensorFlow server: job scripts say --trainer none.
    assert plan_service({**BASE, "HPCVISION_GPUS": MIXED_GPUS}, "none").trainer is None


def test_trainers_find_the_dispatcher_or_say_in_one_line_why_not(pbs_env):
    alone = discover({"CUDA_VISIBLE_DEVICES": ""})
    assert service_plan.dispatcher_address(alone, {"HPCVISION_BASE_PORT": "6000"})[0] == "127.0.0.1:6000"
    launched = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:4001", "127.0.0.1:4002"]},
                                         "task": {"type": "worker", "index": 1}})}  # `hpcvision launch`
    assert service_plan.dispatcher_address(discover(launched), {})[0] == f"127.0.0.1:{plan.DEFAULT_BASE_PORT}"
    job = {**pbs_env, "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}
    with pytest.raises(UserError, match=r"^--data-service auto: HPCVISION_GPUS names no GPU-less host") as error:
        service_plan.dispatcher_address(discover(job), {**job, "HPCVISION_GPUS": "gpu01=4"})
    assert "\n" not in str(error.value)


def test_a_service_plan_refuses_a_trainers_tf_config_and_notes_a_dispatcher_elsewhere(pbs_env):
    launched = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:4001"]},
                                         "task": {"type": "worker", "index": 0}})}
    with pytest.raises(UserError, match="TF_CONFIG is set"):
        plan_service(launched)
    # The CPU hosts listed after a GPU host in HPCVISION_GPUS: the trainers' auto would look elsewhere.
    job = {**pbs_env, "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "HPCVISION_GPUS": "gpu09=4,cpu09=0"}
    (note,) = plan_service(job).notes
    assert "looks for it on cpu09" in note
