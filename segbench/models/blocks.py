"""Layers several papers' heads share: conv-BN-ReLU and bilinear upsampling.

Bilinear resizing. Every network here that resizes bilinearly comes from code that maps the
corners of the input grid onto the corners of the output grid: Caffe's ``Interp`` layer
(PSPNet, DeepLab v1/v2, hszhao/semseg) and TF's ``resize_bilinear(align_corners=True)``
(DeepLab v3/v3+, tensorflow/models ``research/deeplab``). That is why their crops are
``stride * k + 1`` pixels (321, 473, 513, 713): the stride-``s`` score grid then lands exactly on
every ``s``-th input pixel. So one constant serves all of them; FCN upsamples with bilinear-
initialised deconvolutions, SegNet by unpooling and U-Net by up-convolutions, none resizes. A
family whose reference code resizes otherwise (mmseg's ``align_corners=False``) would get its own
constant here, next to this one.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Caffe ``Interp`` and TF DeepLab's ``resize_bilinear``: corners aligned (see the docstring).
ALIGN_CORNERS = True


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of a feature or score map to ``size`` (corners aligned, as above)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=ALIGN_CORNERS)


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 1, rate: int = 1, bias: bool = False,
                 relu: bool = True) -> list[nn.Module]:
    """k x k conv ("same" padding at atrous ``rate``) + BN [+ ReLU], as a flat list.

    A list, so that a caller can splice the layers into its own ``nn.Sequential`` (PSPNet's
    heads, SegNet's stages keep their state-dict keys that way). No bias by default: BN follows
    and would subtract it again. Weight init stays with the caller (papers differ)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=rate * (kernel_size - 1) // 2, dilation=rate,
                     bias=bias)
    return [conv, nn.BatchNorm2d(out_ch)] + ([nn.ReLU(inplace=True)] if relu else [])


class ConvBNReLU(nn.Sequential):
    """:func:`conv_bn_relu` as one module whose atrous rate can change (DeepLab's ASPP)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, rate: int = 1):
        super().__init__(*conv_bn_relu(in_ch, out_ch, kernel_size, rate))

    def set_rate(self, rate: int) -> None:
        conv = self[0]
        conv.dilation, conv.padding = (rate, rate), (rate, rate)
