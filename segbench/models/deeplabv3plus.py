"""DeepLab v3+ (Chen, Zhu, Papandreou, Schroff, Adam, ECCV 2018, arXiv 1802.02611).

Reads like the paper's §3 and Fig. 2:

* encoder (§3.1) -- DeepLab v3 at output stride 16: an atrous backbone and the same ASPP
  (1x1 + three 3x3 atrous rates (6, 12, 18) + image pooling, 256 ch, 1x1 fusion), shared with
  :mod:`segbench.models.deeplabv3`; OS 8 for evaluation via :meth:`set_output_stride`
  (rates doubled);
* decoder (§3.1, Tables 1-2) -- the stride-4 low-level features ("Conv2" of ResNet, i.e.
  ``layer1``; entry block 2's second separable conv of Xception, before its ReLU) projected by
  a 1x1 conv to 48 ch (+ BN + ReLU) so they do not outweigh the encoder features, concatenated
  with the encoder output upsampled x4, refined by two 3x3 convs of 256 ch (+ BN + ReLU), then a
  1x1 classifier; the logits are upsampled x4 to the input size;
* backbones (§3.2) -- ResNet-101, or the modified Aligned Xception-65
  (:mod:`segbench.models.backbones.xception`) with which the paper applies depthwise
  separable convolution "to both ASPP and decoder modules" (Table 5, "SC"). ``separable_conv``
  defaults to that pairing (separable for Xception, plain for ResNet).

As in the TF release, dropout 0.1 follows the ASPP fusion only, and resizing is bilinear with
``align_corners=True``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.errors import SegbenchError
from segbench.models.backbones.resnet import RESNETS, ResNetBackbone, check_name
from segbench.models.backbones.xception import XCEPTIONS, XceptionBackbone
from segbench.models.base import BackboneModel
from segbench.models.blocks import ConvBNReLU, upsample
from segbench.models.deeplabv3 import (
    ASPP,
    ASPP_CHANNELS,
    SeparableConvBNReLU,
    aspp_rates_at,
    set_bn_momentum,
)

BACKBONES = RESNETS + XCEPTIONS
LOW_LEVEL_CHANNELS = 48  # Table 1: 48 channels work best for the 1x1 projection
DECODER_CHANNELS = 256  # Table 2: two 3x3 convs with 256 filters


class Decoder(nn.Module):
    """The v3+ decoder (§3.1): project low-level features, concat, refine with two 3x3 convs."""

    def __init__(self, low_channels: int, separable: bool):
        super().__init__()
        conv = SeparableConvBNReLU if separable else ConvBNReLU
        self.project = ConvBNReLU(low_channels, LOW_LEVEL_CHANNELS, 1)
        self.refine = nn.Sequential(
            conv(ASPP_CHANNELS + LOW_LEVEL_CHANNELS, DECODER_CHANNELS, 3),
            conv(DECODER_CHANNELS, DECODER_CHANNELS, 3),
        )

    def forward(self, encoded: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        # "first bilinearly upsampled by a factor of 4" -- to the low-level size, whatever the OS
        encoded = upsample(encoded, low.shape[-2:])
        return self.refine(torch.cat([encoded, self.project(low)], dim=1))


def build_backbone(name: str, output_stride: int, multi_grid: Sequence[int], deep_stem: bool,
                   pretrained: bool) -> ResNetBackbone | XceptionBackbone:
    check_name(name, BACKBONES)
    if name in XCEPTIONS:
        if deep_stem:
            raise SegbenchError("deep_stem applies to ResNet backbones only; Xception has its own stem")
        return XceptionBackbone(name, output_stride, multi_grid, pretrained)
    return ResNetBackbone(name, output_stride, multi_grid, deep_stem, pretrained)


class DeepLabV3Plus(BackboneModel):
    """DeepLab v3+: DeepLab v3 encoder + a simple decoder on stride-4 features.

    Args:
        num_classes: number of output classes.
        backbone: ``xception65`` (the paper's best, Table 5) | ``resnet50`` | ``resnet101`` |
            ``resnet152``.
        output_stride: encoder output stride, 16 for training (§4), 8 for evaluation.
        multi_grid: unit rates of the backbone's last block (the paper's models use none).
        aspp_rates: atrous ASPP rates *at OS 16* (6, 12, 18).
        separable_conv: depthwise separable 3x3 convs in ASPP and decoder; ``None`` = as the
            paper: for Xception yes, for ResNet no (Tables 3 and 5).
        deep_stem: ResNet only, three 3x3 convs instead of the 7x7 (TF ``resnet_v1_101_beta``).
        dropout: after the ASPP fusion (TF release: 0.1).
        pretrained: ImageNet weights for the backbone.
        bn_momentum: BN running-statistics momentum (TF decay 0.9997 = 3e-4); ``None`` = 0.1.

        low_level_tap: ResNet only. ``"tf"`` = where the TF release taps the decoder's
            stride-4 features, ``block1/unit_2/bottleneck_v1/conv3`` (``feature_extractor.py``
            ``DECODER_END_POINTS``): the *second* unit's residual branch after its BN, before
            the residual sum and ReLU (``layer1[1].bn3``); ``"layer1"`` = ``layer1``'s output
            (third unit, after sum and ReLU), as torchvision-style ports do. Both 256 ch.
    """

    corner_aligned = True  # trained on k*OS+1 crops (models.base: aligned_stride)

    def __init__(
        self,
        num_classes: int,
        backbone: str = "xception65",
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 1, 1),
        aspp_rates: Sequence[int] = (6, 12, 18),
        separable_conv: bool | None = None,
        deep_stem: bool = False,
        dropout: float = 0.1,
        pretrained: bool = False,
        bn_momentum: float | None = None,
        low_level_tap: str = "layer1",
    ):
        super().__init__()
        if low_level_tap not in ("layer1", "tf"):
            raise SegbenchError(f"deeplabv3plus: low_level_tap must be layer1 or tf, got {low_level_tap!r}")
        if low_level_tap == "tf" and backbone in XCEPTIONS:
            raise SegbenchError("deeplabv3plus: low_level_tap=tf applies to ResNet backbones (Xception taps its own block)")
        if separable_conv is None:
            separable_conv = backbone in XCEPTIONS
        self.base_rates = tuple(aspp_rates)
        rates = aspp_rates_at(aspp_rates, output_stride)
        self.backbone = build_backbone(backbone, output_stride, multi_grid, deep_stem, pretrained)
        self.aspp = ASPP(self.backbone.channels("out"), rates, separable=separable_conv, dropout=dropout)
        self.decoder = Decoder(self.backbone.channels("low"), separable_conv)
        self.classifier = nn.Conv2d(DECODER_CHANNELS, num_classes, 1)
        set_bn_momentum(self, bn_momentum)
        self._tapped: torch.Tensor | None = None
        if low_level_tap == "tf":
            self.backbone.layer1[1].bn3.register_forward_hook(self._keep_low_level)

    def _keep_low_level(self, module, inputs, output):
        """Keep the BN output and hand the block a copy: the block adds the shortcut in place."""
        self._tapped = output
        return output.clone()

    def set_output_stride(self, output_stride: int) -> None:
        """Encoder density only (same weights): the decoder always works at stride 4."""
        rates = aspp_rates_at(self.base_rates, output_stride)
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_rates(rates)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        low = features["low"] if self._tapped is None else self._tapped
        self._tapped = None
        decoded = self.decoder(self.aspp(features["out"]), low)
        return {"out": upsample(self.classifier(decoded), x.shape[-2:])}
