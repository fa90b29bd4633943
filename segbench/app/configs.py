"""Every config read outside a running verb: Hydra's own compose, never a hand-written merge.

``segbench train experiment=X`` and a script asking "what does experiment X say?" must get the
same answer, so both go through :func:`compose` (the defaults lists, ``override``s and the
experiment's base recipes resolved by Hydra itself). Inside a verb Hydra is already initialised
on ``segbench.conf`` and is reused; elsewhere a context is opened for the call.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from segbench.errors import SegbenchError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def available(group: str) -> list[str]:
    """Names of the choices in a config group (``model``, ``data``, ``experiment``, ...)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@contextlib.contextmanager
def _hydra_context():
    if GlobalHydra.instance().is_initialized():  # inside a verb: reuse its search path
        yield
        return
    with initialize_config_module(config_module="segbench.conf", version_base="1.3"):
        yield


def compose(config_name: str = "train", overrides: list[str] | tuple = (), with_choices: bool = False) -> DictConfig:
    """The config ``segbench <verb> <overrides>`` composes (``config_name`` is the verb's file).

    ``with_choices=True`` adds ``choices``: which file each group resolved to (Hydra's
    ``hydra.runtime.choices``), e.g. the model and data an experiment selects.
    """
    with _hydra_context():
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=with_choices)
    if with_choices:
        choices = dict(cfg.hydra.runtime.choices)
        with_hydra = OmegaConf.to_container(cfg, resolve=False)
        with_hydra.pop("hydra")
        cfg = OmegaConf.create({**with_hydra, "choices": choices})
    return cfg


def group(name: str, choice: str, config_name: str = "train") -> DictConfig:
    """One group's config as ``<name>=<choice>`` composes it (e.g. ``group("model", "unet_small")``);
    interpolations into other groups (``${data.num_classes}``) are left for the caller to resolve."""
    if choice not in available(name):
        raise SegbenchError(f"unknown {name} '{choice}'; available: {', '.join(available(name))}")
    cfg = compose(config_name, [f"{name}={choice}"])
    return cfg[name]


@functools.cache
def _experiment(name: str) -> DictConfig:
    if name not in available("experiment"):
        raise SegbenchError(f"unknown experiment '{name}'; available: {', '.join(available('experiment'))}")
    return compose("train", [f"experiment={name}"], with_choices=True)


def experiment(name: str) -> DictConfig:
    """Experiment ``name`` composed as ``segbench train experiment=<name>`` would, plus ``choices``
    (cached: a composed recipe does not change within one process; a copy is returned)."""
    return OmegaConf.create(OmegaConf.to_container(_experiment(name), resolve=False))


def experiment_choices(name: str) -> dict:
    """``{"model": ..., "data": ...}``: the config files experiment ``name`` selects."""
    choices = _experiment(name).choices
    return {g: choices[g] for g in ("model", "data") if choices.get(g)}


def papers() -> dict[str, dict]:
    """``experiment -> its paper block`` (with ``model``/``data`` choices added), for every experiment
    that carries one."""
    found = {}
    for name in available("experiment"):
        cfg = _experiment(name)
        paper = cfg.get("paper")
        if isinstance(paper, DictConfig) and paper.get("value") is not None:
            found[name] = {**OmegaConf.to_container(paper, resolve=True), **experiment_choices(name)}
    return found
