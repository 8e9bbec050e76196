"""Step 6: who am I in the job (scheduler formats, discovery, the cluster plan and TF_CONFIG, the input service's
plan), local launcher, job scripts, walltime."""
