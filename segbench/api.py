"""The stable Python API: build a model or a dataset by its config name.

Both read the same YAML files the CLI composes (``segbench/conf/model/<name>.yaml``,
``segbench/conf/data/<name>.yaml``) and build them with ``hydra.utils.instantiate``, so a
script and ``segbench train model=<name>`` always get the same object.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segbench.errors import SegbenchError
from segbench.trust import instantiate_unwrapped  # noqa: F401 - part of the public API

CONF_DIR = Path(__file__).resolve().parent / "conf"


def available(group: str) -> list[str]:
    """Names of the choices in a config group (``model``, ``data``, ...)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_group_config(group: str, name: str) -> DictConfig:
    """A group config file, with its defaults list (configs of the same group) merged in.

    Group files here only inherit from siblings (``unet_small`` = ``unet`` + overrides), so
    this small resolution equals what Hydra's composition gives for the same file.
    """
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise SegbenchError(
            f"unknown {group} '{name}'; available: {', '.join(available(group))}"
        )
    cfg = OmegaConf.load(path)
    defaults = cfg.pop("defaults", None) or []
    if not defaults:
        return cfg
    merged = OmegaConf.create()
    for entry in defaults:
        merged = OmegaConf.merge(merged, cfg if entry == "_self_" else load_group_config(group, entry))
    if "_self_" not in defaults:
        merged = OmegaConf.merge(merged, cfg)
    return merged


def build_model(name: str, num_classes: int, **overrides: Any):
    """Build the network ``name`` (a file in ``conf/model/``) for ``num_classes`` classes.

    >>> model = build_model("unet", num_classes=21, base_channels=16)
    """
    cfg = load_group_config("model", name)
    cfg.num_classes = num_classes
    cfg = OmegaConf.merge(cfg, overrides)
    return instantiate_unwrapped(cfg)


def build_dataset(name: str, root: str | Path, split: str, **overrides: Any):
    """Build the dataset ``name`` (a file in ``conf/data/``) reading ``root``, split ``split``.

    Extra keyword arguments go to the dataset class (e.g. ``transform=``).
    """
    cfg = load_group_config("data", name)
    return instantiate_unwrapped(cfg.dataset, root=str(root), split=split, **overrides)
