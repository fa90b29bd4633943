"""Hydra configs shipped with the package (config groups are folders)."""
