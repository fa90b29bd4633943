"""Memory-format helper: keep a channels_last network channels_last end to end.

A tensor with a 1x1 spatial extent (a global-pooling branch) has no memory format of its own:
its NCHW and NHWC strides describe the same bytes, and ops that resize it (``interpolate``)
answer NCHW. Concatenated with NHWC branches, that one NCHW input turns the whole ``cat``
into NCHW, every following conv reorders its input, and in the backward pass the NCHW
gradient is accumulated into the NHWC one through a strided (slow) ``add``. Measured on
DeepLab v3 R-50 OS8, bf16 + channels_last, 4 x 256^2 on an AMX CPU (benchmarks/amx_step.py).
"""
from __future__ import annotations

import torch


def like_format(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` in ``ref``'s memory format (channels_last or contiguous); a no-op when it already is."""
    if ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling to 1x1 that keeps the gradient in ``x``'s memory format.

    ``adaptive_avg_pool2d(x, 1)`` is computed as ``x.mean((2, 3))``, whose backward is an
    expanded (stride-0) tensor divided into a fresh NCHW gradient, whatever ``x``'s format; a
    full-size ``avg_pool2d`` is the same average with a channels_last backward kernel.
    """
    return torch.nn.functional.avg_pool2d(x, kernel_size=tuple(x.shape[-2:]))


class GlobalAvgPool(torch.nn.Module):
    """:func:`global_avg_pool` as a module: ``nn.AdaptiveAvgPool2d(1)``'s drop-in (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(x)
