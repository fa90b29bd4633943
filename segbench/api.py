"""The stable Python API: build a model or a dataset by its config name.

Both read the same YAML files the CLI composes (``segbench/conf/model/<name>.yaml``,
``segbench/conf/data/<name>.yaml``) and build them with ``hydra.utils.instantiate``, so a
script and ``segbench train model=<name>`` always get the same object.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segbench.errors import SegbenchError

CONF_DIR = Path(__file__).resolve().parent / "conf"


def available(group: str) -> list[str]:
    """Names of the choices in a config group (``model``, ``data``, ...)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_group_config(group: str, name: str) -> DictConfig:
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise SegbenchError(
            f"unknown {group} '{name}'; available: {', '.join(available(group))}"
        )
    return OmegaConf.load(path)


def build_model(name: str, num_classes: int, **overrides: Any):
    """Build the network ``name`` (a file in ``conf/model/``) for ``num_classes`` classes.

    >>> model = build_model("unet", num_classes=21, base_channels=16)
    """
    cfg = load_group_config("model", name)
    cfg.num_classes = num_classes
    cfg = OmegaConf.merge(cfg, overrides)
    return instantiate(cfg, _convert_="all")


def build_dataset(name: str, root: str | Path, split: str, **overrides: Any):
    """Build the dataset ``name`` (a file in ``conf/data/``) reading ``root``, split ``split``.

    Extra keyword arguments go to the dataset class (e.g. ``transform=``).
    """
    cfg = load_group_config("data", name)
    return instantiate(cfg.dataset, root=str(root), split=split, **overrides, _convert_="all")
