"""The schedulers' own formats, parsed: Slurm node lists and task counts, PBS node and GPU files, GPU counts.

Pure readers of one string, file or variable each; which of them applies is `discovery`'s decision.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping

from hpcvision.errors import UserError


def expand_nodelist(text: str) -> list[str]:
    """Slurm host list to names: `nid[00010-00012,00020],gpu01` -> nid00010 ... gpu01 (keeps padding)."""
    hosts: list[str] = []
    for item in _split_top_level(text.strip()):
        if item:
            hosts.extend(_expand_item(item, text))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _expand_item(item: str, whole: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", item)
    if match is None:
        if "[" in item or "]" in item:
            raise UserError(f"SLURM node list {whole!r}: unbalanced brackets in {item!r}")
        return [item]
    prefix, suffix = item[: match.start()], item[match.end() :]
    names = []
    for part in match.group(1).split(","):
        for number in _expand_range(part, whole):
            names.extend(_expand_item(prefix + number + suffix, whole))
    return names


def _expand_range(part: str, whole: str) -> list[str]:
    low, _, high = part.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        raise UserError(f"SLURM node list {whole!r}: cannot read range {part!r}")
    if not high:
        return [low]
    width = len(low)
    if int(high) < int(low):
        raise UserError(f"SLURM node list {whole!r}: range {part!r} runs backwards")
    return [str(n).zfill(width) for n in range(int(low), int(high) + 1)]


def expand_tasks_per_node(text: str) -> list[int]:
    """Slurm tasks per node to one count per node: `2(x3),1` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in text.strip().split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if match is None:
            raise UserError(f"SLURM tasks per node {text!r}: cannot read {item!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def read_nodefile(path: str) -> list[str]:
    """Lines of a PBS node file (one per slot; a host repeats once per slot), blank lines dropped."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError as exc:
        raise UserError(f"{path}: cannot read PBS_NODEFILE ({exc.strerror})") from None
    hosts = [line.split()[0] for line in lines if line and not line.startswith("#")]
    if not hosts:
        raise UserError(f"{path}: PBS_NODEFILE lists no hosts")
    return hosts


def group_slots(hosts: list[str]) -> list[tuple[str, int]]:
    """(host, slots) in first-appearance order; mpirun's default by-slot mapping fills hosts this way."""
    counts: dict[str, int] = {}
    for host in hosts:
        counts[host] = counts.get(host, 0) + 1
    return list(counts.items())


def slurm_gpus_per_node(env: Mapping[str, str], suffix: str = "") -> int | None:
    """GPUs per node from SLURM_GPUS_PER_NODE (`4`, `a100:4`, `gpu:a100:4`); 0 when the job asked for none.

    `suffix` reads one component of a heterogeneous job (`_HET_GROUP_1`).
    """
    for name in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE"):
        value = env.get(name + suffix, "").strip()
        if value:
            match = re.search(r"(\d+)\s*$", value.split(",")[0].split("(")[0])
            if match:
                return int(match.group(1))
    return None


def local_gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use, without importing TensorFlow: CUDA_VISIBLE_DEVICES, else /dev/nvidiaN."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        return 0 if not ids or ids[0].strip() == "-1" else len(ids)
    return len([p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)])


def gpu_overrides(env: Mapping[str, str]) -> tuple[int | None, dict[str, int]]:
    """HPCVISION_GPUS: `4` (every host) or `cpu01=0,gpu01=4` (per host) for schedulers that don't say."""
    text = env.get("HPCVISION_GPUS", "").strip()
    if not text:
        return None, {}
    if text.isdigit():
        return int(text), {}
    per_host = {}
    for item in text.split(","):
        host, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise UserError(f"HPCVISION_GPUS={text!r}: expected N or host=N,host=N")
        per_host[host.strip()] = int(count)
    return None, per_host


def pbs_gpu_counts(env: Mapping[str, str]) -> dict[str, int]:
    """Torque's PBS_GPUFILE lists `host-gpuN` per GPU: count them per host."""
    path = env.get("PBS_GPUFILE")
    counts: dict[str, int] = {}
    if not path or not os.path.exists(path):
        return counts
    for line in read_nodefile(path):
        host = re.sub(r"-gpu\d+$", "", line)
        counts[host] = counts.get(host, 0) + 1
    return counts


def tasks_per_host(env: Mapping[str, str]) -> int | None:
    """HPCVISION_TASKS_PER_NODE: ranks started on each host when the node file lists a host once per core.

    Torque writes one line per core (ppn), PBS Pro one per MPI process (mpiprocs); job scripts for
    Torque set this variable so discovery spreads ranks as `mpirun --map-by ppr:T:node` does.
    """
    text = env.get("HPCVISION_TASKS_PER_NODE", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"HPCVISION_TASKS_PER_NODE={text!r}: expected a whole number >= 1")
    return int(text)


def cores_per_task(env: Mapping[str, str]) -> int | None:
    """HPCVISION_CORES_PER_TASK: a Torque host listed N times runs N // C ranks (mixed jobs, `--map-by slot:PE=C`)."""
    text = env.get("HPCVISION_CORES_PER_TASK", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"HPCVISION_CORES_PER_TASK={text!r}: expected a whole number >= 1")
    return int(text)


def slurm_het_groups(env: Mapping[str, str]) -> list[int]:
    """The components of a Slurm heterogeneous job this step spans: HPCVISION_HET_GROUPS (`0,1`), else every
    component the job has (SLURM_JOB_NODELIST_HET_GROUP_0, _1, ...); [] outside a heterogeneous job."""
    text = env.get("HPCVISION_HET_GROUPS", "").strip()
    if text:
        groups = [item.strip() for item in text.split(",")]
        if not all(g.isdigit() for g in groups):
            raise UserError(f"HPCVISION_HET_GROUPS={text!r}: expected component numbers such as 0,1")
        return [int(g) for g in groups]
    count = 0
    while f"SLURM_JOB_NODELIST_HET_GROUP_{count}" in env:
        count += 1
    return list(range(count)) if count > 1 else []
