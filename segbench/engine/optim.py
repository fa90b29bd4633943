"""The optimiser: any ``optim._target_`` with Caffe-style per-parameter lr / decay multipliers,
and PyTorch's fused step where it has one."""
from __future__ import annotations

import functools
import re

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from segbench.errors import SegbenchError


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (or any ``optim._target_``) with per-parameter lr / weight-decay multipliers by name.

    ``optim.param_rules`` is a list of ``{pattern, lr_mult, weight_decay_mult[, ndim]}``: a
    trainable parameter takes the first rule whose regex ``pattern`` is found in its name (and
    whose ``ndim``, when given, equals the parameter's number of dimensions); unmatched ones
    get multipliers 1 / 1. This is Caffe's per-blob ``lr_mult`` / ``decay_mult``, which the
    reference solvers set by layer: FCN biases x2 without decay (voc-fcn*/net.py), DeepLab
    v1/v2 fc8 x10 / biases x20 (train.prototxt; deeplab-pytorch main.py), and TF slim's
    regulariser, which decays only conv weights (DeepLab v3/v3+: ``ndim: 1`` = BN and biases).
    Each group keeps its ``lr_mult``; the schedulers (``LambdaLR``) scale every group's own
    initial lr, so the multipliers hold at every iteration. The unmatched group comes first
    (``param_groups[0]`` has the base lr, as the trainer logs it). The legacy
    ``head_lr_mult`` (parameters outside ``model.backbone``) is appended as one more rule.
    """
    optim_cfg = OmegaConf.to_container(cfg.optim, resolve=True)
    rules = [dict(r) for r in optim_cfg.pop("param_rules", None) or []]
    head_mult = optim_cfg.pop("head_lr_mult", 1.0)
    if head_mult != 1.0:
        rules.append({"pattern": r"^(?!backbone\.)", "lr_mult": head_mult})
    compiled = []
    for rule in rules:
        unknown = set(rule) - {"pattern", "lr_mult", "weight_decay_mult", "ndim"}
        if "pattern" not in rule or unknown:
            raise SegbenchError(f"optim.param_rules: each rule needs 'pattern' and may set lr_mult, "
                                f"weight_decay_mult, ndim; got {rule}")
        try:
            compiled.append((re.compile(rule["pattern"]), rule.get("ndim")))
        except re.error as err:
            raise SegbenchError(f"optim.param_rules: bad regex {rule['pattern']!r}: {err}") from None
    members: list[list[torch.nn.Parameter]] = [[] for _ in range(len(rules) + 1)]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        index = next((i + 1 for i, (regex, ndim) in enumerate(compiled)
                      if regex.search(name) and (ndim is None or param.ndim == ndim)), 0)
        members[index].append(param)
    base_lr, base_wd = optim_cfg["lr"], optim_cfg.get("weight_decay", 0.0)
    groups = []
    for rule, params in zip([{"pattern": None}] + rules, members):
        if not params:
            continue
        lr_mult, wd_mult = float(rule.get("lr_mult", 1.0)), float(rule.get("weight_decay_mult", 1.0))
        groups.append({"params": params, "lr": base_lr * lr_mult, "weight_decay": base_wd * wd_mult,
                       "lr_mult": lr_mult, "weight_decay_mult": wd_mult, "rule": rule["pattern"]})
    fast = fused_step_options(optim_cfg, (p for g in groups for p in g["params"]))
    return instantiate(optim_cfg, _partial_=True)(groups, **fast)


FUSED_OPTIMIZERS = ("torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW")


def fused_step_options(optim_cfg: dict, params) -> dict:
    """``{"fused": True}`` where PyTorch has a fused kernel for the optimiser's step, else ``{}``.

    One kernel per parameter tensor instead of 3-4 elementwise passes: measured on the AMX CPU
    (ResNet-50, 25.6 M parameters, SGD + momentum + weight decay, interleaved) the fused step
    took 0.5x the for-loop's time; ``foreach=True`` took 2x (CPU tensors have no multi-tensor
    kernels, so it is a slower loop). Same update rule; an explicit ``fused``/``foreach`` in
    ``optim`` wins.
    """
    if "fused" in optim_cfg or "foreach" in optim_cfg or optim_cfg.get("_target_") not in FUSED_OPTIMIZERS:
        return {}
    params = list(params)
    if not params:
        return {}
    devices = {p.device.type for p in params}
    if len(devices) != 1 or not all(p.is_floating_point() and not p.is_sparse for p in params):
        return {}
    return {"fused": True} if has_fused_step(optim_cfg["_target_"], params[0].device.type) else {}


@functools.cache
def has_fused_step(target: str, device_type: str) -> bool:
    """Whether ``target`` takes a fused step on ``device_type``, asked of torch itself (it has no
    public query): one step of a one-element probe, which refuses ``fused=True`` where no kernel is."""
    probe = torch.zeros(1, device=device_type, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    try:
        get_class(target)([probe], lr=0.1, fused=True).step()
    except RuntimeError:
        return False
    return True
