"""Turn a composed config into objects: device, model, datasets, loaders, optimiser, AMP context.

The trainer and the evaluator both build through here, so validation during training and
``segbench eval`` see the same model, the same data pipeline and the same precision.
"""
from __future__ import annotations

import contextlib
import functools
import os
import random
import re

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from segbench.trust import instantiate_unwrapped
from segbench.errors import SegbenchError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SegbenchError(f"trainer.device={name} but CUDA is not available; use trainer.device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


CPU_BF16_ENV = "SEGBENCH_CPU_BF16"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")  # how a switch may be spelled


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16).

    Elsewhere oneDNN has no bf16 kernels and PyTorch falls back to slow reference code:
    on this project's AVX2 reference CPU a bf16 1024x1024 GEMM runs ~50x slower than fp32
    and a bf16-autocast DeepLab v3 training step >10x slower (``benchmarks/precision.py``).

    ``SEGBENCH_CPU_BF16=1|0`` overrides the detection. Every machine-dependent default
    (precision, memory format) derives from this one answer, so the test suite forces it
    both ways and passes on AVX2-only and AMX CPUs alike.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced:
        if forced not in _TRUE + _FALSE:
            raise SegbenchError(f"{CPU_BF16_ENV}={forced!r}: use 1 (bf16 is native) or 0")
        return forced in _TRUE
    return detect_cpu_bf16()


@functools.lru_cache(maxsize=1)
def detect_cpu_bf16() -> bool:
    """What the kernel says this CPU can do (``/proc/cpuinfo`` flags), read once."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> the fastest precision that is safe on ``device`` (others pass through).

    bf16 autocast on CUDA GPUs that support it (Ampere and later) and on CPUs with native
    bf16; fp32 everywhere else. fp16 is never chosen automatically: it needs loss scaling
    and can overflow, so pre-Ampere GPUs stay fp32 unless ``trainer.precision=fp16`` is
    asked for. The CPU rule is measured (benchmarks/precision.py; the README's Performance section).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_channels_last(device: torch.device, precision: str, value="auto") -> bool:
    """``trainer.channels_last``: ``auto`` -> NHWC where the step runs in bf16/fp16 natively.

    Measured (README "Performance", benchmarks/precision.py): on an AMX/AVX512-BF16 CPU
    oneDNN's bf16 convolutions are NHWC kernels, and an NCHW model pays a reorder around
    every conv (DeepLab v3 R-50 bf16: 2.39 s vs 3.09 s per step); tensor cores on CUDA want
    NHWC likewise. In fp32 on an AVX2 CPU NHWC gained nothing consistent (0.78-1.24x), and
    bf16 without native support is slow in any layout, so ``auto`` keeps NCHW there.
    ``precision`` may be ``auto`` (resolved here). True/false pass through.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    if text != "auto":
        raise SegbenchError(f"trainer.channels_last must be auto, true or false, got {value!r}")
    precision = resolve_precision(device, str(precision))
    if precision not in ("bf16", "fp16"):
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


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
    from torch.optim.optimizer import _get_fused_kernels_supported_devices  # no public query yet

    devices = {p.device.type for p in params}
    ok = (len(devices) == 1 and devices <= set(_get_fused_kernels_supported_devices())
          and all(p.is_floating_point() and not p.is_sparse for p in params))
    return {"fused": True} if ok else {}


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast or nothing. fp16 is CUDA-only (CPU autocast supports bf16)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise SegbenchError(f"trainer.precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    if dtype is torch.float16 and device.type != "cuda":
        raise SegbenchError("trainer.precision=fp16 needs CUDA; on CPU use bf16 or fp32")
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_model(cfg: DictConfig) -> torch.nn.Module:
    return instantiate_unwrapped(constructor_config(cfg.model))


INIT_FROM = "init_from"


def constructor_config(model_cfg: DictConfig) -> DictConfig:
    """``cfg.model`` without ``init_from``: weights from an earlier run are not a constructor
    argument; the trainer copies them after building (:func:`init_from_run`)."""
    if INIT_FROM not in model_cfg.keys():  # (``in model_cfg`` is False for a ``???`` value)
        return model_cfg
    plain = OmegaConf.to_container(model_cfg, resolve=True)  # resolved while the parent is at hand
    plain.pop(INIT_FROM)
    return OmegaConf.create(plain)


def apply_init_from(model: torch.nn.Module, model_cfg: DictConfig, resuming: bool = False,
                    quiet: bool = False) -> list[str] | None:
    """``model.init_from`` if set (and not resuming: the run's own checkpoint wins). A staged
    recipe leaves it ``???``: training it alone is a user error with the fix in the message."""
    if INIT_FROM not in model_cfg.keys() or resuming:
        return None
    if OmegaConf.is_missing(model_cfg, INIT_FROM):
        raise SegbenchError("this recipe is staged: set model.init_from=<run dir or checkpoint of its previous "
                            "stage> (e.g. FCN-16s from an fcn32s_vgg16_voc run); make reproduce chains the stages")
    source = model_cfg[INIT_FROM]
    if source in (None, ""):
        return None
    return init_from_run(model, source, log=(lambda _: None) if quiet else print)


def init_from_run(model: torch.nn.Module, source, log=print) -> list[str]:
    """Copy into ``model`` every tensor of an earlier run whose name and shape match.

    FCN's staged training (§4.2; reference ``voc-fcn16s/solve.py`` ``copy_from``: Caffe copies
    the layers whose names match) initialises FCN-16s from a trained FCN-32s and FCN-8s from
    FCN-16s: the trunk, fc6/fc7 and ``score_fr`` carry over, the new skip scorers keep their
    zero init. ``source`` is a run directory (its ``best.pt``, else ``last.pt``) or a checkpoint
    file. Returns the names of this model's tensors left as they were (and logs them); raises
    when nothing matches (the wrong run).
    """
    from pathlib import Path

    from segbench.engine.checkpoint import load_checkpoint

    path = Path(str(source)).expanduser()
    if path.is_dir():
        path = next((path / n for n in ("best.pt", "last.pt") if (path / n).is_file()), path / "last.pt")
    weights = load_checkpoint(path)["model"]
    own = model.state_dict()
    matching = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not matching:
        raise SegbenchError(f"model.init_from={source}: no tensor of {path} matches this model by name and "
                            f"shape (was it trained with another network?)")
    model.load_state_dict(matching, strict=False)
    skipped = [k for k in own if k not in matching]
    log(f"init_from {path}: copied {len(matching)} tensors, kept {len(skipped)} as initialised"
        + (f": {', '.join(skipped)}" if skipped else ""))
    return skipped


def build_dataset(cfg: DictConfig, split: str, train: bool):
    transform = instantiate_unwrapped(cfg.data.transforms.train if train else cfg.data.transforms.val)
    dataset = instantiate_unwrapped(cfg.data.dataset, split=split, transform=transform)
    if dataset.num_classes != cfg.data.num_classes:
        raise SegbenchError(
            f"data.num_classes={cfg.data.num_classes} but {dataset.name} has {dataset.num_classes} classes"
        )
    return dataset


def build_eval_loader(cfg: DictConfig, dataset, sampler=None) -> DataLoader:
    workers = int(cfg.data.num_workers)
    return DataLoader(
        dataset,
        batch_size=int(cfg.data.val_batch_size),
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )


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


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone."))
    return {"total": total, "trainable": trainable, "backbone": backbone, "head": total - backbone}
