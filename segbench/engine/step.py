"""One optimisation step: what :class:`~segbench.engine.trainer.Trainer` runs every iteration and
what ``segbench bench`` and ``benchmarks/`` time, so a measured step is the trained one."""
from __future__ import annotations

import torch

from segbench.engine.device import autocast


def train_step(net, criterion, optimizer, scaler, images: torch.Tensor, labels: torch.Tensor,
               precision: str = "fp32", channels_last: bool = False, grad_clip=None) -> torch.Tensor:
    """One optimisation step: forward (under autocast), loss, backward, optimiser step.

    ``segbench bench`` and benchmarks/ time this very function. The gradients are released
    (``set_to_none``) *before* the forward, so they are not held alongside the activations:
    peak memory is one parameter-size lower than zeroing them after the forward.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, precision):
        outputs = net(images)
    loss = criterion(outputs, labels)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, float(grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()
