"""Memory-format helper: keep a channels_last network channels_last end to end.

A tensor with a 1x1 spatial extent (a global-pooling branch) has no memory format of its own:
its NCHW and NHWC strides describe the same bytes, and ops that resize it (``interpolate``)
answer NCHW. Concatenated with NHWC branches, that one NCHW input turns the whole ``cat``
into NCHW, every following conv reorders its input, and in the backward pass the NCHW
gradient is accumulated into the NHWC one through a strided (slow) ``add``. Measured on
DeepLab v3 R-50 OS8, bf16 + channels_last, 4 x 256^2 on an AMX CPU (benchmarks/step_limit.py).
"""
from __future__ import annotations

import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-D tensor laid out NHWC (and not also NCHW, as 1x1 or single-channel ones are)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def like_format(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` in ``ref``'s memory format (channels_last or contiguous); a no-op when it already is."""
    if is_channels_last(ref):
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


def max_unpool2d(x: torch.Tensor, indices: torch.Tensor, size, kernel_size: int = 2, stride: int = 2,
                 ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_unpool2d`` (SegNet §3: upsample with the encoder's pooling indices) that keeps
    ``x``'s dtype and memory format, forward and backward.

    Under CPU bf16 autocast ``max_unpool2d`` runs in fp32 (a cast there and back around every
    decoder stage), and its backward gathers into an NCHW gradient whatever the format, so each
    decoder BN backward reorders it (benchmarks/step_limit.py --model segnet_basic). Unpooling
    is the max-pool's backward scatter (windows do not overlap when ``kernel_size == stride``),
    which has native bf16 and channels_last kernels; its own backward is a gather at ``indices``.
    ``kernel_size``/``stride``/``ceil_mode`` are the encoder pool's.
    """
    if kernel_size != stride:
        raise ValueError("max_unpool2d: overlapping windows (kernel_size != stride) are not an unpooling")
    return _MaxUnpool.apply(x, indices, tuple(size), kernel_size, stride, ceil_mode)


class _MaxUnpool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, indices, size, kernel_size, stride, ceil_mode):
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        template = torch.empty((*x.shape[:2], *size), dtype=x.dtype, device=x.device, memory_format=fmt)
        ctx.save_for_backward(indices)
        return torch.ops.aten.max_pool2d_with_indices_backward(
            x.contiguous(memory_format=fmt), template, [kernel_size] * 2, [stride] * 2, [0, 0], [1, 1], ceil_mode,
            indices.contiguous(memory_format=fmt))

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        n, c, h, w = indices.shape
        if is_channels_last(grad):  # gather along H*W in the N x HW x C view: stays channels_last
            flat = grad.permute(0, 2, 3, 1).reshape(n, -1, c)
            index = indices.permute(0, 2, 3, 1).reshape(n, h * w, c)
            out = flat.gather(1, index).view(n, h, w, c).permute(0, 3, 1, 2)
        else:
            out = grad.reshape(n, c, -1).gather(2, indices.reshape(n, c, -1)).view(n, c, h, w)
        return out, None, None, None, None, None


class MaxUnpool2d(torch.nn.MaxUnpool2d):
    """``nn.MaxUnpool2d`` (non-overlapping windows) computed by :func:`max_unpool2d`: same values,
    same gradients, no fp32 / NCHW detours. The pool's ceil mode is read off the sizes."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size=None) -> torch.Tensor:
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        if output_size is None or p or len({*self.kernel_size, *self.stride}) != 1:
            return super().forward(x, indices, output_size)
        size = tuple(output_size)[-2:]
        ceil = any((full - k) // s + 1 != pooled for full, pooled in zip(size, x.shape[-2:]))
        return max_unpool2d(x, indices, size, k, s, ceil_mode=ceil)
