"""Step 3: cluster plan -> distribution strategy, training loop, checkpoints, summaries."""
