"""Configs only the bench verb sees (added to its Hydra search path): model=all."""
