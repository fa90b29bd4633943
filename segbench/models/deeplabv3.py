"""DeepLab v3 (Chen, Papandreou, Schroff, Adam, arXiv 1706.05587, 2017).

Reads like the paper's §3:

* §3.1/§3.2 -- a ResNet-101 whose last stages are atrous so that the output stride is 16
  (training) or 8 (evaluation, :meth:`DeepLabV3.set_output_stride`), with Multi-Grid
  (1, 2, 4) unit rates in the last block;
* §3.3 -- Atrous Spatial Pyramid Pooling with batch normalisation: a 1x1 conv, three 3x3
  atrous convs with rates (6, 12, 18) at OS 16 -- doubled at OS 8 -- and image-level
  features (global average pooling -> 1x1 conv -> bilinear upsampling), each 256 ch + BN +
  ReLU, concatenated (1280 ch) and fused by a 1x1 conv (256 ch + BN + ReLU);
* a final 1x1 conv to the classes; the logits are upsampled to the input size and the ground
  truth is kept intact (§4.1, "upsampling logits"). No auxiliary head, no CRF.

Two details come from the authors' released TF code (tensorflow/models
``research/deeplab/model.py``), as the paper is silent on them: dropout 0.1
(``keep_prob=0.9``) after the 1x1 fusion (torchvision uses 0.5 there), and bilinear resizing
with ``align_corners=True`` (crops of 513 = 16*32+1 pixels keep the grids aligned).

torchvision's ``deeplabv3_resnet101`` has one more layer than the paper: a 3x3 conv
256->256 + BN + ReLU between ASPP and the classifier (590,336 parameters; see the tests).

The ASPP pieces here are shared with DeepLab v3+ (``segbench.models.deeplabv3plus``), whose
Xception variant makes the atrous branches depthwise separable (v3+ §3.2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.errors import SegbenchError
from segbench.models.backbones.resnet import ResNetBackbone
from segbench.models.base import BackboneModel
from segbench.models.blocks import ConvBNReLU, upsample
from segbench.models.layout import global_avg_pool, like_format

ASPP_CHANNELS = 256
#: ASPP rates are given at this output stride and scaled with it (v3 §3.3: "(6, 12, 18) when
#: output stride = 16 ... rates are doubled when output stride = 8").
RATES_AT_OS = 16


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise 3x3 atrous conv + BN + ReLU, pointwise 1x1 conv + BN + ReLU (TF DeepLab's
    ``split_separable_conv2d``, used in v3+'s ASPP and decoder, v3+ §3.1 "atrous separable
    convolution")."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, rate: int = 1):
        assert kernel_size == 3
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=rate, dilation=rate, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    set_rate = ConvBNReLU.set_rate  # the depthwise conv is the first layer too


class ImagePooling(nn.Module):
    """Image-level features (v3 §3.3, after ParseNet): global average pooling, 1x1 conv + BN +
    ReLU, bilinear upsampling back to the feature size."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.project = ConvBNReLU(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.project(global_avg_pool(x))  # = adaptive_avg_pool2d(x, 1), NHWC-friendly backward
        return like_format(upsample(pooled, x.shape[-2:]), x)  # else the ASPP concat turns NCHW


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling with image-level features (v3 §3.3, Fig. 5).

    Args:
        in_ch: channels of the backbone output (2048).
        rates: rates of the three 3x3 atrous branches at the *current* output stride.
        separable: depthwise-separable 3x3 branches (v3+ Xception variant).
        dropout: after the 1x1 fusion (TF release: 0.1).
    """

    def __init__(self, in_ch: int, rates: Sequence[int], out_ch: int = ASPP_CHANNELS,
                 separable: bool = False, dropout: float = 0.1):
        super().__init__()
        atrous = SeparableConvBNReLU if separable else ConvBNReLU
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_ch, out_ch, 1)]
            + [atrous(in_ch, out_ch, 3, rate) for rate in rates]
            + [ImagePooling(in_ch, out_ch)]
        )
        self.project = nn.Sequential(
            ConvBNReLU(len(self.branches) * out_ch, out_ch, 1), nn.Dropout(dropout)
        )

    def set_rates(self, rates: Sequence[int]) -> None:
        for branch, rate in zip(self.branches[1:-1], rates):
            branch.set_rate(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    """Every BN layer's running-statistics momentum; ``None`` keeps PyTorch's 0.1.

    The TF release trains with ``batch_norm_decay`` 0.9997 (v3 §4.1 "decay = 0.9997"):
    TF's ``moving = decay * moving + (1 - decay) * batch`` is PyTorch's momentum ``1 - decay``
    = 3e-4, so the recipes set ``bn_momentum: 0.0003``.
    """
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = float(momentum)


def aspp_rates_at(rates: Sequence[int], output_stride: int) -> list[int]:
    """The configured rates (given at OS 16) at ``output_stride``: x2 at OS 8, /2 at OS 32."""
    scaled = [r * RATES_AT_OS / output_stride for r in rates]
    if any(s != int(s) or s < 1 for s in scaled):
        raise SegbenchError(f"aspp_rates {list(rates)} (at OS 16) have no integer equivalent at OS {output_stride}")
    return [int(s) for s in scaled]


class DeepLabV3(BackboneModel):
    """DeepLab v3: atrous ResNet + ASPP + 1x1 classifier (paper §3, Table 5's best model).

    Args:
        num_classes: number of output classes.
        backbone: ``resnet50`` | ``resnet101`` | ``resnet152`` (paper: ResNet-101).
        output_stride: 16 for training, 8 for evaluation (§4.1); see :meth:`set_output_stride`.
        multi_grid: unit rates of the last block, Multi-Grid (1, 2, 4) (§3.2, Table 3).
        aspp_rates: rates of the atrous ASPP branches *at OS 16* (6, 12, 18) (§3.3).
        deep_stem: three 3x3 convs instead of the 7x7 (TF release's ``resnet_v1_101_beta``).
        dropout: after the ASPP fusion (TF release: 0.1).
        pretrained: ImageNet weights for the backbone.
        bn_momentum: BN running-statistics momentum (TF decay 0.9997 = 3e-4); ``None`` = 0.1.
    """

    corner_aligned = True  # trained on k*OS+1 crops (models.base: aligned_stride)

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 2, 4),
        aspp_rates: Sequence[int] = (6, 12, 18),
        deep_stem: bool = False,
        dropout: float = 0.1,
        pretrained: bool = False,
        bn_momentum: float | None = None,
        backbone_width: int = 64,
        aspp_channels: int = ASPP_CHANNELS,
    ):
        super().__init__()
        self.base_rates = tuple(aspp_rates)
        rates = aspp_rates_at(aspp_rates, output_stride)
        self.backbone = ResNetBackbone(backbone, output_stride, multi_grid, deep_stem, pretrained, backbone_width)
        self.aspp = ASPP(self.backbone.channels("out"), rates, aspp_channels, dropout=dropout)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
        set_bn_momentum(self, bn_momentum)

    def set_output_stride(self, output_stride: int) -> None:
        """Same weights, new density: backbone dilations and ASPP rates follow (§4.1: train
        at OS 16, "inference on ... output stride = 8")."""
        rates = aspp_rates_at(self.base_rates, output_stride)  # validate before changing anything
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_rates(rates)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)["out"]
        logits = self.classifier(self.aspp(features))
        return {"out": upsample(logits, x.shape[-2:])}
