"""Training: the loop, checkpoints and the run folder."""
