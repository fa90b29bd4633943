"""The contract every backbone keeps, in timm's style, so no caller needs to know which one it has.

A :class:`Backbone` is an ``nn.Module`` whose ``forward`` returns a dict of named feature maps
(``"out"`` is always the deepest) and which reports:

* ``feature_info`` -- one :class:`FeatureInfo` (name, channels, stride) per returned map, at the
  current output stride;
* ``output_stride`` and ``set_output_stride(os)`` -- re-dilation in place where the trunk
  supports it (ResNet, Xception), a :class:`~segbench.errors.SegbenchError` where it is fixed;
* ``set_grad_checkpointing(enable)`` -- its forward then runs each stage (or block) through
  :meth:`Backbone.run` under :func:`torch.utils.checkpoint.checkpoint` while training.

Gradient checkpointing keeps only each unit's input and recomputes its inner activations when
the gradient reaches it, for about one extra backbone forward per step. The step stays exact:
the recomputation replays the RNG state (dropout) and :func:`_keep_running_stats` undoes the
second update a recomputed BN layer makes to its running statistics, so they move once per step
as without checkpointing. Module names (state-dict keys) are untouched.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from segbench.errors import SegbenchError


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone returns: its key, channels, and stride w.r.t. the input."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class of the trunks in :mod:`segbench.models.backbones` (see the module docstring)."""

    output_stride: int

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        raise NotImplementedError

    def channels(self, name: str = "out") -> int:
        """Channels of the feature map ``name``."""
        return next(info.channels for info in self.feature_info if info.name == name)

    def set_output_stride(self, output_stride: int) -> None:
        """Fixed-stride trunks accept only their own stride; dilatable ones override this."""
        if output_stride != self.output_stride:
            raise SegbenchError(f"{type(self).__name__} has a fixed output stride ({self.output_stride}); "
                                f"it cannot run at output stride {output_stride}")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    def run(self, unit: nn.Module | Callable, *args, modules: tuple[nn.Module, ...] = ()):
        """``unit(*args)``, checkpointed when enabled, training and recording gradients.

        ``modules``: the layers ``unit`` runs when it is a plain function (for their BN layers)."""
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return unit(*args)
        norms = [m for owner in (modules or (unit,)) for m in owner.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
        return checkpoint(unit, *args, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), _keep_running_stats(norms)))

    def run_blocks(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """A stage of residual blocks, checkpointed block by block."""
        for block in stage:
            x = self.run(block, x)
        return x


@contextlib.contextmanager
def _keep_running_stats(norms: list[nn.Module]):
    """Around a recomputation: restore the BN statistics its forward updates a second time.

    A checkpointed unit's BN layers run twice in a step (forward, then recomputation in
    backward), each time in training mode; without this the running mean/var would take two
    momentum steps and ``num_batches_tracked`` count 2 per step, and a checkpointed run would
    drift from a plain one."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
