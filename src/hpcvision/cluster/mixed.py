"""The body of a mixed CPU+GPU training job: which hosts are which, one base port, what the CPU nodes run.

The CPU nodes serve the GPU nodes in one of two ways (`JobSpec.service` says which):
- parameter servers, as the course's Blue Waters jobs did (train's --strategy parameter-server or auto, with
  the job's `--ps auto`: one per CPU node): one launch of every rank; discovery puts the ps and the chief on
  the GPU-less hosts, the workers on the GPU hosts;
- the input service, with all-reduce: `hpcvision data serve` runs as one launch of one rank per CPU node, each
  finding its part from the cluster plan (`cluster.service_plan`: rank 0 a tf.data service dispatcher and a
  worker, the others a worker), and the trainers, on the GPU nodes alone, read their batches from it
  (`train --data-service auto`: the same plan's dispatcher). The dispatcher stops once the trainers' chief
  has come and gone, a worker once its dispatcher has; the script's exit trap stops whatever is left.

Slurm: a heterogeneous job, component 0 the CPU nodes, 1 the GPU nodes (SLURM_JOB_NODELIST_HET_GROUP_<n>).
PBS: one job of two kinds of chunk; PBS lists the hosts in the order of the chunks (CPU nodes first), so the
script splits $PBS_NODEFILE's hosts there and writes the ranks' own node file, one line per rank, which
mpirun and discovery read (Torque's lists a host once per core), and the service's, each CPU node once.
Every rank gets each host's GPU count (HPCVISION_GPUS: PBS Pro keeps no GPU file) and the same
HPCVISION_BASE_PORT (a heterogeneous job's components have job ids of their own, from which each would
derive another base port).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpcvision.cluster import jobscript
from hpcvision.cluster.plan import FIRST_JOB_PORT, JOB_PORT_WINDOWS, PORTS_PER_JOB

if TYPE_CHECKING:
    from hpcvision.cluster.jobscript import JobSpec


def rank_environment(spec: JobSpec) -> list[tuple[str, str]]:
    """What every rank of a mixed job is told besides the usual (values are set by `prelude`)."""
    # The step spans both components (parameter servers) or the GPU component alone (input service).
    return _environment(spec, het_groups="1" if spec.service else "0,1", nodefile='"$nodefile"')


def service_environment(spec: JobSpec) -> list[tuple[str, str]]:
    """What every rank of the input service is told: its own ranks are Slurm's component 0 alone, or the
    service's node file."""
    return _environment(spec, het_groups="0", nodefile='"$servicefile"')


def _environment(spec: JobSpec, het_groups: str, nodefile: str) -> list[tuple[str, str]]:
    """The job's base port and every host's GPU count, and where the launch's ranks are found."""
    pairs = [("HPCVISION_BASE_PORT", '"$HPCVISION_BASE_PORT"'), ("HPCVISION_GPUS", '"$gpus"')]
    if spec.scheduler == "slurm":
        return pairs + [("HPCVISION_HET_GROUPS", het_groups)]
    return pairs + [("PBS_NODEFILE", nodefile)]


def prelude(spec: JobSpec) -> list[str]:
    """Lines before the trainers' launch: host lists, the base port, GPU counts, the node file, the service."""
    return (_host_lines(spec) + _port_lines(spec) + _gpu_lines(spec) + _nodefile_lines(spec)
            + _cleanup_lines(spec) + (_service_lines(spec) if spec.service else []))


def trainer_launch(spec: JobSpec, command: list[str]) -> list[str]:
    """The launcher words in front of `command` (env ... hpcvision train ...) for the training ranks."""
    job = spec.options
    gpu_options = jobscript.srun_options(spec, job.cpus_per_task, gpus=True)
    if spec.scheduler == "pbs":
        return ["mpirun", "-np", str(spec.total_tasks), "-machinefile", '"$nodefile"', *command]
    if spec.service:
        return ["srun", "--kill-on-bad-exit=1", "--het-group=1", *gpu_options, *command]
    cpu_options = jobscript.srun_options(spec, spec.cpu_cores_per_task, gpus=False)
    # One step over both components: SLURM_PROCID counts across them, component 0's ranks first.
    return ["srun", "--kill-on-bad-exit=1", "--het-group=0", *cpu_options, *command,
            ":", "--het-group=1", *gpu_options, *command]


def _host_lines(spec: JobSpec) -> list[str]:
    cpu, gpu = spec.options.cpu_nodes, spec.options.nodes
    if spec.scheduler == "slurm":
        return [
            f"# Mixed job: Slurm component 0 holds the {cpu} CPU node(s), component 1 the {gpu} GPU node(s).",
            'mapfile -t cpu_hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_0")',
            'mapfile -t gpu_hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_1")',
            "",
        ]
    return [
        f"# Mixed job: PBS lists the hosts in the order of the chunks asked for, the {cpu} CPU node(s) first,",
        f"# then the {gpu} GPU node(s).",
        "mapfile -t hosts < <(awk '!seen[$0]++' \"$PBS_NODEFILE\")",
        f'if [ "${{#hosts[@]}}" -ne {cpu + gpu} ]; then',
        f'    echo "hpcvision: $PBS_NODEFILE names ${{#hosts[@]}} host(s); the job asked for {cpu} CPU + {gpu} GPU '
        'node(s)" >&2',
        "    exit 2",
        "fi",
        f'cpu_hosts=("${{hosts[@]:0:{cpu}}}")',
        f'gpu_hosts=("${{hosts[@]:{cpu}}}")',
        'for host in "${cpu_hosts[@]}"; do',
        '    if [ -n "${PBS_GPUFILE:-}" ] && grep -q "^$host-gpu" "$PBS_GPUFILE"; then',
        '        echo "hpcvision: $host has GPUs in $PBS_GPUFILE but comes first, where the CPU nodes are" >&2',
        "        exit 2",
        "    fi",
        "done",
        "",
    ]


def _port_lines(spec: JobSpec) -> list[str]:
    lines = ["# One base port for every process of the job (ports: base + slot on each host)."]
    if spec.options.port is not None:
        return lines + [f"HPCVISION_BASE_PORT={spec.options.port}", "export HPCVISION_BASE_PORT", ""]
    job_id = "SLURM_JOB_ID" if spec.scheduler == "slurm" else "PBS_JOBID"
    return lines + [
        f"job_number=${{{job_id}:-0}}",
        "job_number=${job_number%%[!0-9]*}",
        f"HPCVISION_BASE_PORT=$(( {FIRST_JOB_PORT} + job_number % {JOB_PORT_WINDOWS} * {PORTS_PER_JOB} ))",
        "export HPCVISION_BASE_PORT",
        "",
    ]


def _gpu_lines(spec: JobSpec) -> list[str]:
    return [
        "# Every host's GPU count, the same for every rank (parameter servers go to the GPU-less hosts).",
        'gpus=""',
        'for host in "${cpu_hosts[@]}"; do gpus+="$host=0,"; done',
        f'for host in "${{gpu_hosts[@]}}"; do gpus+="$host={spec.options.gpus_per_node},"; done',
        "gpus=${gpus%,}",
        "",
    ]


def _nodefile_lines(spec: JobSpec) -> list[str]:
    if spec.scheduler != "pbs":
        return []
    what = "the trainers" if spec.service else "the ps and the chief on the CPU nodes, then the workers"
    lines = [
        f"# The ranks' node file, one line per rank ({what}): mpirun places",
        "# the ranks by it and discovery reads it, on every host (so it lives in the shared working directory).",
        'nodefile="$PWD/.hpcvision-$PBS_JOBID.nodes"',
        "{",
    ]
    for index, tasks in enumerate([] if spec.service else spec.cpu_tasks):
        lines.append("    printf '%s\\n'" + f' "${{cpu_hosts[{index}]}}"' * tasks)
    lines += [
        '    for host in "${gpu_hosts[@]}"; do',
        "        printf '%s\\n'" + ' "$host"' * spec.options.tasks_per_node,
        "    done",
        '} > "$nodefile"',
        "",
    ]
    if spec.service:
        lines += ["# The input service's node file: each CPU node once (one service rank per node).",
                  'servicefile="$PWD/.hpcvision-$PBS_JOBID.service"',
                  'printf \'%s\\n\' "${cpu_hosts[@]}" > "$servicefile"', ""]
    return lines


def _cleanup_lines(spec: JobSpec) -> list[str]:
    if not spec.service and spec.scheduler != "pbs":
        return []
    files = ['"$nodefile"', *(['"$servicefile"'] if spec.service else [])] if spec.scheduler == "pbs" else []
    what = [*(["stop what is left of the input service"] if spec.service else []),
            *([f"remove the node file{'s' if len(files) > 1 else ''}"] if files else [])]
    commands = [*(['kill "${service[@]}" 2>/dev/null || true'] if spec.service else []),
                *([f"rm -f {' '.join(files)}"] if files else [])]
    return [*(["service=()"] if spec.service else []),
            f"# On exit, however the job ends: {' and '.join(what)}.",
            f"trap '{'; '.join(commands)}' EXIT", ""]


def _service_lines(spec: JobSpec) -> list[str]:
    """Start the tf.data service in the background: one rank per CPU node, each placed by the service plan."""
    environment = ["env", *(f"{name}={value}" for name, value in service_environment(spec))]
    serve = ['"$HPCVISION"', "data", "serve", *([] if spec.gpu_tasks > 1 else ["--trainer", "none"])]
    cpu = spec.options.cpu_nodes
    if spec.scheduler == "pbs":
        # One rank per node whatever mpirun takes a host listed once for (Open MPI: all its cores).
        # Open MPI syntax, as for Torque (MPICH/Intel MPI: -ppn 1).
        launch = ["mpirun", "-np", str(cpu), "--map-by", "ppr:1:node", "-machinefile", '"$servicefile"']
    else:
        launch = ["srun", "--het-group=0", f"--nodes={cpu}", "--ntasks-per-node=1",
                  *jobscript.srun_options(spec, spec.cpu_cores_per_task, gpus=False)]
    stop = (["# The dispatcher stops once the trainers' chief (worker 0, on the first GPU node) has come and gone,",
             "# each worker once its dispatcher has."] if spec.gpu_tasks > 1 else
            ["# One trainer runs no TensorFlow server to watch (--trainer none): the exit trap stops the service."])
    return [
        "# The input service (tf.data service) on the CPU nodes, one rank each, placed by the service plan",
        "# (`hpcvision data serve --dry-run` prints it): rank 0 the dispatcher at the base port and a worker,",
        "# the others a worker at base + 1.",
        *stop,
        "# The trainers read their batches from it (--data-service auto): decoding leaves the GPU nodes' cores.",
        " \\\n    ".join(jobscript.wrap_words(launch + environment + serve)) + " &",
        'service+=("$!")',
        "",
    ]
