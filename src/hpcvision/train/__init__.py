"""Step 3-4: distribution strategy, training loop, checkpoints, summaries, evaluate, export."""
