"""Step 6: PBS/Slurm/MPI discovery, local launcher, job scripts, walltime."""
