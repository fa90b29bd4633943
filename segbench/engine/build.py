"""Turn a composed config into objects: device, model, datasets, loaders, optimiser, AMP context.

The trainer and the evaluator both build through here, so validation during training and
``segbench eval`` see the same model, the same data pipeline and the same precision.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from segbench.api import instantiate_unwrapped
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


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast or nothing. fp16 is CUDA-only (CPU autocast supports bf16)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise SegbenchError(f"trainer.precision must be fp32, bf16 or fp16, got '{precision}'")
    if dtype is torch.float16 and device.type != "cuda":
        raise SegbenchError("trainer.precision=fp16 needs CUDA; on CPU use bf16 or fp32")
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_model(cfg: DictConfig) -> torch.nn.Module:
    return instantiate_unwrapped(cfg.model)


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
    """SGD (or any ``optim._target_``) with two parameter groups.

    Parameters under ``model.backbone`` get ``optim.lr``; the rest (the new heads) get
    ``lr * head_lr_mult`` (DeepLab v1 §5 trains the classifier at 10x). No weight decay on
    BN/bias would deviate from the papers' Caffe setups, so decay applies to all.
    """
    optim_cfg = OmegaConf.to_container(cfg.optim, resolve=True)
    head_mult = optim_cfg.pop("head_lr_mult", 1.0)
    backbone, head = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith("backbone.") else head).append(param)
    groups = [{"params": backbone, "lr_mult": 1.0}, {"params": head, "lr_mult": head_mult}]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = optim_cfg["lr"] * g["lr_mult"]
    return instantiate(optim_cfg, _partial_=True)(groups)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backbone = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone."))
    return {"total": total, "trainable": trainable, "backbone": backbone, "head": total - backbone}
