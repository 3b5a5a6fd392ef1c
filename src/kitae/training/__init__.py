"""Training: the loop, callbacks, checkpoints."""
