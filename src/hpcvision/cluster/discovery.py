"""Who am I in this job? Rank, size and the TensorFlow cluster from the launcher's environment.

Stable entry points (issue 4 fills in PBS/Slurm/MPI):
- `process_rank()`: (rank, ranks) for `data extract/build` defaults;
- `resolve_tf_config(num_ps)`: the TF_CONFIG dict for this process, or None for one process.
"""

from __future__ import annotations

import json
import os

from hpcvision.errors import UserError

# (rank variable, size variable) set by common launchers, most specific first.
LAUNCHER_RANK_VARS = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMIX_RANK", "PMIX_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
)


def process_rank(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """This process's (rank, number of ranks); (0, 1) outside a parallel launcher."""
    env = os.environ if environ is None else environ
    for rank_var, size_var in LAUNCHER_RANK_VARS:
        if rank_var in env and size_var in env:
            return int(env[rank_var]), int(env[size_var])
    return 0, 1


def resolve_tf_config(num_ps: int = 0, environ: dict[str, str] | None = None) -> dict | None:
    """The TF_CONFIG for this process: an explicit TF_CONFIG wins; None when running alone."""
    env = os.environ if environ is None else environ
    raw = env.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if "cluster" not in config or "task" not in config:
        raise UserError("TF_CONFIG must have 'cluster' and 'task' keys")
    return config
