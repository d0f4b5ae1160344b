"""Training engine: datasets, the training step, the epoch loop (Python 3.6 safe)."""
