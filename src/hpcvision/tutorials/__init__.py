"""Step 7: the course lessons, one runnable script each."""
