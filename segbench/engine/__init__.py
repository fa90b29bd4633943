"""Training loop, evaluation, inference protocols, checkpoints."""
