"""Who am I in this job? Rank and size from the launcher's environment.

Issue 4 grows this into full PBS/Slurm/MPI discovery; `process_rank` is its stable entry point,
used by `data extract/build` for their `--rank/--ranks` defaults.
"""

from __future__ import annotations

import os

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
