"""The stable Python API: build a model or a dataset by its config name.

Both compose the same configs the CLI does (``model=<name>``, ``data=<name>``, through
:mod:`segbench.app.configs`, i.e. Hydra's compose) and build them with ``_target_``, so a
script and ``segbench train model=<name>`` always get the same object.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segbench.app.configs import CONF_DIR, available, group  # noqa: F401 - part of the public API
from segbench.engine.build import constructor_config
from segbench.trust import instantiate_unwrapped


def build_model(name: str, num_classes: int, **overrides: Any):
    """Build the network ``name`` (a file in ``conf/model/``) for ``num_classes`` classes.

    >>> model = build_model("unet", num_classes=21, base_channels=16)
    """
    cfg = group("model", name)
    cfg.num_classes = num_classes
    cfg = OmegaConf.merge(cfg, overrides)
    return instantiate_unwrapped(constructor_config(cfg))  # as the trainer builds it: no `smoke` block


def build_dataset(name: str, root: str | Path, split: str, **overrides: Any):
    """Build the dataset ``name`` (a file in ``conf/data/``) reading ``root``, split ``split``.

    Extra keyword arguments go to the dataset class (e.g. ``transform=``).
    """
    cfg = group("data", name)
    return instantiate_unwrapped(cfg.dataset, root=str(root), split=split, **overrides)
