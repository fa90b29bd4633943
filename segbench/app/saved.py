"""A run's saved config, and what a later command may change in it.

A checkpoint carries the config its run trained with, resolved (``data.dataset.root`` is a copy
of ``data.root``, not a reference to it). Three commands start from it:

* ``segbench eval`` / ``segbench predict`` (:func:`for_evaluation`): ``overrides=[...]`` may tune
  how the data is read (workers, batch, split, protocol), never what the checkpoint fixes — the
  network, its classes and their encoding, its input normalisation — and never a key only training
  reads; ``data_root=`` (or ``overrides=["data.root=..."]``) moves every path of the dataset;
* ``segbench train trainer.resume=<run>`` (:func:`for_resume`): the run's config with only the
  overrides typed on this command on top; :func:`segbench.engine.checkpoint.resume_changes`
  then says which of them a resume may change.

A setting that would be ignored is refused, all of them in one message.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from segbench.app.overrides import split_override
from segbench.engine.config import DataConfig, ProtocolConfig, TrainerConfig
from segbench.errors import SegbenchError

# What the weights fix: another value would build another network or read its outputs wrongly.
FIXED_BY_CHECKPOINT = ("model", "data.name", "data.num_classes", "data.dataset._target_", "data.mean",
                       "data.std", "data.transforms.val._target_", "data.transforms.val.normalize")
# Read by training only: an evaluation would accept them and change nothing.
TRAINING_ONLY = ("optim", "schedule", "loss", "trainer", "data.transforms.train", "data.batch_size",
                 "data.train_split")
ROOT_KEYS = ("data.root", "data.dataset.root")
# Keys of a command line that say where and how to train, not what: never part of a resume's comparison.
NOT_RUN_SETTINGS = ("trainer.resume", "trainer.overwrite", "run_dir")


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def reroot(config: dict, root: str | Path) -> dict:
    """``config`` with every path of its dataset that lay under the old ``data.root`` moved under
    ``root`` (the saved config holds resolved copies: ``data.dataset.root``, list files...)."""
    old = str(config["data"]["root"]).rstrip("/")
    new = str(Path(str(root)).expanduser().resolve())

    def move(value):
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, str) and (value == old or value.startswith(old + "/")):
            return new + value[len(old):]
        return value

    return {**config, "data": {**move(config["data"]), "root": new}}


def _parse(override: str) -> tuple[str, object]:
    """``"data.num_workers=0"`` -> ``("data.num_workers", 0)`` (the value typed as YAML reads it)."""
    key, text = split_override(override)
    try:
        if not key or "=" not in str(override):
            raise ValueError(override)
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={text}"]))
        for part in key.split("."):
            value = value[part]
    except Exception:  # noqa: BLE001 -- OmegaConf's grammar errors, an empty key: one message below
        raise SegbenchError(f"overrides: cannot read {override!r}; write key=value, e.g. "
                            f"overrides=[\"data.num_workers=0\"]") from None
    return key, value


def for_evaluation(saved: dict, overrides, data_root: str | None, source: str, verb: str) -> dict:
    """The saved config of ``source`` with the eval/predict ``overrides`` and ``data_root`` applied;
    every override that would change what the checkpoint fixes, that only training reads, or that
    names no key of the run is refused, all in one message."""
    config, refused, root = OmegaConf.create(saved), [], data_root
    for text in overrides or []:
        key, value = _parse(text)
        node = OmegaConf.select(config, key, default=KeyError)
        if _under(key, ROOT_KEYS):
            root = value
        elif "." not in key and isinstance(node, DictConfig) and not isinstance(value, dict):
            refused.append(f"{text} (chooses a config group; the checkpoint's config is already composed)")
        elif _under(key, FIXED_BY_CHECKPOINT):
            refused.append(f"{text} (the checkpoint fixes the network, its classes and its input normalisation)")
        elif _under(key, TRAINING_ONLY):
            refused.append(f"{text} (only training reads it" + (f": {verb} has precision= and channels_last="
                                                                 if key.startswith("trainer.") else "") + ")")
        elif node is KeyError:
            refused.append(f"{text} (no such key in the run's config)")
        else:
            OmegaConf.update(config, key, value, merge=True)
    if refused:
        raise SegbenchError(
            f"{verb} rebuilds the model and its data from {source}; these overrides cannot apply: "
            f"{'; '.join(refused)}. For another model pass its run= or ckpt="
            + ("; to read the same dataset from another folder, data_root=<dir>" if verb == "eval" else ""))
    config = OmegaConf.to_container(config)
    return reroot(config, root) if root else config


def typed_settings(overrides: list[str]) -> list[str]:
    """The keys the user typed on the command line that configure the run (not where it lives)."""
    keys = []
    for text in overrides:
        key = split_override(text)[0]
        if not key.startswith(("hydra.", "hydra/")) and not _under(key, NOT_RUN_SETTINGS) and key not in keys:
            keys.append(key)
    return keys


def for_resume(saved: dict, composed: DictConfig, overrides: list[str]) -> DictConfig:
    """What ``trainer.resume=<run>`` trains with: the run's saved config, with the value of each key
    the user typed (as Hydra composed it; a group such as ``model=`` brings its whole node) on top.
    Defaults the user never typed stay as the run had them. ``experiment=`` changes too many keys to
    name: the composed config is compared as a whole then."""
    keys = typed_settings(overrides)
    if "experiment" in keys:
        return composed
    config, unknown = OmegaConf.create(saved), []
    for key in keys:
        if OmegaConf.select(config, key, default=KeyError) is KeyError:
            unknown.append(key)
            continue
        value = OmegaConf.select(composed, key, default=None)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if key in ROOT_KEYS:
            config = OmegaConf.create(reroot(OmegaConf.to_container(config), value))
            continue
        with open_dict(config):
            OmegaConf.update(config, key, value, merge=False)
    if unknown:
        raise SegbenchError(f"a resume continues the run with its own configuration, which has no "
                            f"{', '.join(unknown)}; drop {'it' if len(unknown) == 1 else 'them'} (the run's "
                            f"config is in its .hydra/config.yaml)")
    return with_new_keys(config, composed)


# The typed parts of a config (segbench/engine/config.py) whose keys a run saved by an earlier
# segbench may lack: such a key takes today's default, as the engine reads every one of them.
TYPED_PARTS = {"trainer": TrainerConfig, "data": DataConfig, "eval_protocol": ProtocolConfig}


def with_new_keys(config: DictConfig, composed: DictConfig) -> DictConfig:
    """``config`` (a run's saved config) with each typed key it lacks taken from ``composed``."""
    with open_dict(config):
        for part, schema in TYPED_PARTS.items():
            saved, today = config.get(part), composed.get(part)
            missing = [] if saved is None or today is None else [
                f.name for f in fields(schema) if f.name not in saved and f.name in today]
            if missing:
                defaults = OmegaConf.to_container(today, resolve=True)  # once per part, not per key
                for key in missing:
                    saved[key] = defaults[key]
    return config
