"""PSPNet (Zhao, Shi, Qi, Wang, Jia, CVPR 2017, arXiv 1612.01105).

Reads like the paper's §3.2-§3.4 and Fig. 3, as re-implemented by the authors in PyTorch
(hszhao/semseg ``model/pspnet.py``):

* a ResNet with the "deep stem" (three 3x3 convs, the authors' own ImageNet model) and dilated
  last two stages, so that the feature map is 1/8 of the input (§3.3);
* the Pyramid Pooling Module (§3.2): adaptive average pooling to 1x1, 2x2, 3x3 and 6x6 bins,
  each followed by a 1x1 conv reducing the 2048 channels to 1/N = 512 (+ BN + ReLU), bilinearly
  upsampled and concatenated with the input features (2048 + 4 x 512 = 4096 ch);
* a 3x3 conv (512 + BN + ReLU), dropout 0.1 and a 1x1 classifier, upsampled to the input;
* the auxiliary FCN head on ``res4b22`` (``layer3``, 1024 ch) used only for training
  (§3.4, Fig. 4); the trainer weights its loss (alpha = 0.4, Table 2).

Resizing is bilinear with corners aligned like the Caffe ``Interp`` layer and semseg
(:func:`segbench.models.blocks.upsample`), which is why the authors' crops are 8k+1 pixels (473, 713).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.models.backbones.resnet import ResNetBackbone
from segbench.models.base import BackboneModel
from segbench.models.blocks import conv_bn_relu, upsample
from segbench.models.layout import GlobalAvgPool, like_format

OUTPUT_STRIDE = 8  # §3.3: "the size of the final feature map is 1/8 of the input image"
HEAD_CHANNELS = 512
AUX_CHANNELS = 256


class PyramidPooling(nn.Module):
    """Pyramid Pooling Module (§3.2, Fig. 3c): a global prior from four pooling scales."""

    def __init__(self, in_ch: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        reduced = in_ch // len(bins)  # "reduce the dimension of context representation to 1/N"
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b) if b > 1 else GlobalAvgPool(), *conv_bn_relu(in_ch, reduced))
            for b in bins
        )
        self.out_channels = in_ch + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        # like_format: the 1x1 bin's upsampled map would come back NCHW and make the concat NCHW
        return torch.cat([x] + [like_format(upsample(stage(x), size), x) for stage in self.stages], dim=1)


def classifier_head(in_ch: int, mid_ch: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv + BN + ReLU + dropout + 1x1 classifier: PSPNet's final layers and its
    auxiliary FCN head share this shape (semseg's ``cls`` and ``aux``)."""
    return nn.Sequential(
        *conv_bn_relu(in_ch, mid_ch, 3), nn.Dropout2d(dropout), nn.Conv2d(mid_ch, num_classes, 1)
    )


class PSPNet(BackboneModel):
    """PSPNet: dilated ResNet (OS 8) + Pyramid Pooling Module + auxiliary head.

    Args:
        num_classes: number of output classes.
        backbone: ``resnet50`` | ``resnet101`` | ``resnet152`` (paper: 50/101/152/269).
        deep_stem: three 3x3 convs (64-64-128) instead of the 7x7 conv, as the authors' models.
        bins: pyramid pooling output sizes (§3.2: 1, 2, 3, 6).
        dropout: before each classifier (0.1, semseg / the Caffe prototxt).
        aux_head: build the auxiliary head on ``layer3`` (§3.4); it is used in training only.
        pretrained: ImageNet weights for the backbone.
    """

    corner_aligned = True  # trained on k*OS+1 crops (models.base: aligned_stride)

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        deep_stem: bool = True,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux_head: bool = True,
        pretrained: bool = False,
    ):
        super().__init__()
        self.backbone = ResNetBackbone(backbone, OUTPUT_STRIDE, (1, 1, 1), deep_stem, pretrained)
        self.ppm = PyramidPooling(self.backbone.channels("out"), bins)
        self.cls = classifier_head(self.ppm.out_channels, HEAD_CHANNELS, num_classes, dropout)
        self.aux = classifier_head(self.backbone.channels("aux"), AUX_CHANNELS, num_classes, dropout) if aux_head else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        result = {"out": upsample(self.cls(self.ppm(features["out"])), size)}
        if self.training and self.aux is not None:
            result["aux"] = upsample(self.aux(features["aux"]), size)
        return result
