"""One optimisation step: what :class:`~segbench.engine.trainer.Trainer` runs every iteration and
what ``segbench bench`` and ``benchmarks/`` time, so a measured step is the trained one."""
from __future__ import annotations

import contextlib

import torch

from segbench.data.normalization import Normalization, network_input
from segbench.engine.device import autocast


def train_step(net, criterion, optimizer, scaler, images: torch.Tensor, labels: torch.Tensor,
               precision: str = "fp32", channels_last: bool = False, grad_clip=None,
               normalization: Normalization | None = None, weights: torch.Tensor | None = None,
               accumulate: int = 1, optimize: bool = True) -> torch.Tensor:
    """One optimisation step: normalise, forward (under autocast), loss, backward, optimiser step.

    ``images`` is the uint8 batch as the workers hand it over, already on the device;
    ``normalization`` turns it into the network's input there (None: ``images`` already is).
    ``weights``: per-pixel loss weights made with the batch (U-Net's maps; see
    :class:`~segbench.engine.losses.SegmentationLoss`).
    ``accumulate`` = N: the batch goes through forward/backward in N equal parts, each loss
    weighted 1/N, gradients summed, one optimiser step (under DDP gradients are all-reduced
    once, with the last part). ``optimize=False``: forward and backward of the first part only
    (the memory trial of :mod:`segbench.engine.fits`).
    ``segbench bench`` and benchmarks/ time this very function. The gradients are released
    (``set_to_none``) *before* the forward, so they are not held alongside the activations:
    peak memory is one parameter-size lower than zeroing them after the forward.
    """
    optimizer.zero_grad(set_to_none=True)
    if accumulate == 1:
        loss = forward_backward(net, criterion, scaler, images, labels, precision, channels_last, normalization,
                                weights)
    else:
        parts = zip(images.chunk(accumulate), labels.chunk(accumulate),
                    weights.chunk(accumulate) if weights is not None else [None] * accumulate)
        losses = []
        for k, (x, y, w) in enumerate(parts):
            last = k == accumulate - 1 or not optimize
            with contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync():
                losses.append(forward_backward(net, criterion, scaler, x, y, precision, channels_last,
                                               normalization, w, loss_scale=1.0 / accumulate))
            if not optimize:
                break
        loss = torch.stack(losses).mean()
    if not optimize:
        return loss
    if grad_clip:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, float(grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return loss


def forward_backward(net, criterion, scaler, images: torch.Tensor, labels: torch.Tensor, precision: str = "fp32",
                     channels_last: bool = False, normalization: Normalization | None = None,
                     weights: torch.Tensor | None = None, loss_scale: float = 1.0) -> torch.Tensor:
    """Forward and backward of one batch, gradients added to ``.grad`` (``loss_scale``: the
    share of one accumulated step, 1/N for N micro-batches). Returns the unscaled loss."""
    images = network_input(images, normalization, channels_last)
    with autocast(images.device, precision):
        outputs = net(images)
    loss = criterion(outputs, labels.long()) if weights is None else criterion(outputs, labels.long(), weights=weights)
    scaler.scale(loss * loss_scale if loss_scale != 1.0 else loss).backward()
    return loss.detach()
