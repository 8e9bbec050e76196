"""Using a trained model: evaluate on a split, export for serving, predict files, extract features."""
