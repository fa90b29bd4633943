"""One checkpoint loader for ``segbench eval`` and ``segbench predict``.

:func:`load` turns ``run=<dir>`` / ``ckpt=<file>`` into a :class:`Loaded`: the model with its
weights, on the device, in eval mode and its memory format, and how it is run
(:class:`~segbench.engine.inference.InferenceSettings`: precision, memory format, normalisation,
the parsed protocol), plus the run's dataset class as the label codec (classes, palette,
``colorize``, ``save_prediction``). Both verbs get the same object for the same checkpoint and
command keys, so they run it alike:

* the checkpoint is opened as data only (``trust_checkpoint=true`` opens a legacy pickle, running
  code from the file) and its saved config checked before anything is built (:mod:`segbench.trust`);
  ``overrides=`` / ``data_root=`` apply as :func:`segbench.app.saved.for_evaluation` allows;
* the protocol is the run's ``eval_protocol`` with the command's ``protocol.*`` / ``postprocess=``
  on top (:func:`resolve_protocol`), parsed once;
* precision and memory format are the command's ``precision=`` / ``channels_last=``, else what the
  training's ``auto`` resolved to (saved in the checkpoint), resolved for this device by
  :func:`segbench.engine.device.resolve_speed` (:func:`speed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from segbench.app import saved
from segbench.data.normalization import Normalization
from segbench.engine import build
from segbench.engine.checkpoint import load_checkpoint, load_model_weights
from segbench.engine.device import resolve_device, resolve_speed
from segbench.engine.inference import BatchInference, InferenceSettings
from segbench.engine.protocol import Protocol
from segbench.errors import CheckpointError, SegbenchError
from segbench.trust import check_config


@dataclass(frozen=True)
class Loaded:
    """A checkpoint ready to predict with: where it came from, its config, the model run as
    ``inference`` says, and its dataset's label codec."""

    checkpoint: Path
    iteration: int
    saved_config: dict  # the config as the checkpoint holds it (what an evaluation record keeps)
    config: DictConfig  # with the command's overrides / data_root applied, checked
    inference: BatchInference  # the model (weights loaded, on its device, eval mode) and its settings
    dataset_class: type  # classes, palette, colorize / save_prediction (class methods): no files needed

    @property
    def model(self) -> torch.nn.Module:
        return self.inference.model

    @property
    def device(self) -> torch.device:
        return self.inference.device

    @property
    def settings(self) -> InferenceSettings:
        return self.inference.settings


def find_checkpoint(cfg: DictConfig) -> Path:
    if cfg.get("ckpt"):
        return Path(cfg.ckpt)
    if not cfg.get("run"):
        raise SegbenchError("say which model to evaluate: segbench eval run=<run dir> (or ckpt=<file>)")
    run = Path(cfg.run)
    if not run.is_dir() or not any(run.iterdir()):  # empty: Hydra just made it for this command
        raise CheckpointError(f"run directory not found: {run}")
    if (run / cfg.which).is_file():
        return run / cfg.which
    if cfg.which == "best.pt" and (run / "last.pt").is_file():  # the default only: a run validated never
        print(f"no best.pt in {run}; evaluating last.pt")
        return run / "last.pt"
    present = sorted(p.name for p in run.glob("*.pt"))
    raise CheckpointError(f"no checkpoint {cfg.which} in {run} (it holds: {', '.join(present) or 'no .pt file'}); "
                          f"pass which=<one of them> or ckpt=<file>")


def load_run(cfg: DictConfig, verb: str = "eval") -> tuple[Path, dict, DictConfig]:
    """(checkpoint path, its state, its saved config with ``overrides=`` / ``data_root=`` applied and
    checked) for ``run=`` / ``ckpt=``: the checkpoint is opened as data only and its config checked
    before anything is built; an override the command would ignore is refused
    (:func:`segbench.app.saved.for_evaluation`)."""
    ckpt_path = find_checkpoint(cfg)
    state = load_checkpoint(ckpt_path, trust=bool(cfg.get("trust_checkpoint", False)))
    if "config" not in state:
        raise CheckpointError(f"{ckpt_path} holds no config (was it written by segbench train?); {verb} "
                              f"rebuilds model, classes and normalisation from it")
    config = saved.for_evaluation(state["config"], list(cfg.get("overrides") or []), cfg.get("data_root"),
                                  f"{ckpt_path} (its saved config)", verb)
    run_cfg = OmegaConf.create(config)
    check_config(run_cfg, f"{ckpt_path} (its saved config)")  # before anything is instantiated or imported
    return ckpt_path, state, run_cfg


def resolve_protocol(cfg: DictConfig, run_cfg: DictConfig) -> dict:
    """The run's own ``eval_protocol`` (what training validated with), with every non-null
    ``protocol.*`` key of the command on top; ``postprocess=crf|none`` replaces the
    post-processing."""
    def plain(node) -> dict:
        return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node or {})

    protocol = plain(run_cfg.get("eval_protocol"))
    for key, value in plain(cfg.get("protocol")).items():
        if value is not None:
            protocol[key] = value
    if cfg.get("postprocess") is not None:  # postprocess=<name> was chosen on the command line
        post = plain(cfg.postprocess)
        protocol["postprocess"] = post if post.get("_target_") else None
    return protocol


def speed(cfg: DictConfig, state: dict, run_cfg: DictConfig, device: torch.device) -> tuple[str, bool]:
    """(precision, channels_last) a checkpoint runs with: the training's own (what its ``auto``
    resolved to, saved in the checkpoint), unless the command's ``precision=`` / ``channels_last=``
    say otherwise; checkpoints without that record take the run's ``trainer`` keys. fp16 (CUDA
    only) recorded by a GPU run and used on a CPU falls back to this CPU's ``auto``."""
    recorded = state.get("speed") or {}
    precision = cfg.get("precision") or recorded.get("precision") or str(run_cfg.trainer.precision)
    if precision == "fp16" and device.type != "cuda" and not cfg.get("precision"):
        precision = "auto"
    channels_last = cfg.get("channels_last")
    if channels_last is None:
        channels_last = recorded.get("channels_last", run_cfg.trainer.get("channels_last", "auto"))
    return resolve_speed(device, precision, channels_last)


def load(cfg: DictConfig, verb: str) -> Loaded:
    """The checkpoint of ``run=`` / ``ckpt=`` ready to run, for ``segbench <verb>`` (module docstring)."""
    ckpt_path, state, run_cfg = load_run(cfg, verb)
    protocol = Protocol.from_config(resolve_protocol(cfg, run_cfg))  # a wrong key stops before the build
    device = resolve_device(str(cfg.get("device", "auto")))
    model = build.build_model(run_cfg)
    load_model_weights(model, state, ckpt_path)
    model.to(device).eval()
    precision, channels_last = speed(cfg, state, run_cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    settings = InferenceSettings(precision, channels_last, Normalization.from_data_config(run_cfg.data), protocol)
    return Loaded(ckpt_path, int(state.get("iteration", -1)), state["config"], run_cfg,
                  BatchInference(model, device, settings), get_class(run_cfg.data.dataset._target_))
