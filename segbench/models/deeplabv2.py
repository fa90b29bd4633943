"""DeepLab v2 (Chen, Papandreou, Kokkinos, Murphy, Yuille, TPAMI 2017, arXiv 1606.00915).

Reads like the paper's §3 and §4.1:

* §3.1 -- atrous convolution for a denser output: output stride 8. ResNet-101 with res4 and
  res5 at rates 2 and 4 (:class:`~segbench.models.backbones.resnet.ResNetBackbone`), or the
  DeepLab VGG16 trunk (pool4/pool5 without subsampling, conv5 at rate 2;
  :class:`~segbench.models.backbones.vgg.DeepLabVGG16`);
* §3.2, Fig. 4/7 -- Atrous Spatial Pyramid Pooling: parallel branches at rates
  (6, 12, 18, 24) ("ASPP-L"; ASPP-S = (2, 4, 8, 12)) that each predict class scores, fused
  by **summation**. VGG16 branch: fc6 (3x3 atrous, 1024) -> fc7 (1x1, 1024) -> fc8 (classes),
  ReLU and dropout 0.5 between. ResNet-101 branch: one 3x3 atrous conv to the classes (the
  released prototxt, ``fc1_voc12_c0..c3``);
* §4.1 -- multi-scale inputs ("MSC"): the image at scales (1, 0.75, 0.5), score maps fused by
  taking the **max** at each position; ``msc_scales`` (off by default). In training the model
  also returns each scale's logits under ``msc`` (all upsampled to the input), and the loss
  sums one cross-entropy per scale with the fused one: four terms for (1, 0.75, 0.5), as the
  authors' Caffe net and kazuto1011/deeplab-pytorch (``main.py``, ``msc.py``) train it;
* BN of the ResNet is not fine-tuned (the released Caffe models keep it fixed; a batch of 10
  is too small for batch statistics): ``freeze_bn`` keeps every BN layer in eval mode with
  fixed affine parameters.

The authors compute the loss on ground truth subsampled by 8 (deeplab-pytorch: labels resized
by nearest neighbour to each scale's logits). The model returns every logit map upsampled to the
input (segbench's convention, as DeepLab v3, v3 §4.1); the recipes set ``loss.label_stride: 8``,
which reads them back on every 8th pixel: with ``align_corners=True`` and 321 crops that is the
stride-8 map itself (:class:`segbench.engine.losses.SegmentationLoss`). The
dense CRF post-processing is not part of the network (see ``segbench.models.crf``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from segbench.models.backbones.resnet import RESNETS, ResNetBackbone, check_name
from segbench.models.backbones.vgg import (
    DeepLabVGG16,
    deeplab_fc_state_dict,
    vgg16_imagenet_state_dict,
)
from segbench.models.base import BackboneModel
from segbench.models.blocks import upsample

BACKBONES = RESNETS + ("vgg16",)
OUTPUT_STRIDE = 8
FC_CHANNELS = 1024  # DeepLab's reduced fc6/fc7 (v1 §4.1)
SCORE_INIT_STD = 0.01  # Gaussian init of the score layers (released prototxts)


def score_layer(layer: nn.Conv2d) -> nn.Conv2d:
    nn.init.normal_(layer.weight, std=SCORE_INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


def resnet_branch(in_ch: int, num_classes: int, rate: int) -> nn.Module:
    """One 3x3 atrous conv straight to class scores."""
    return score_layer(nn.Conv2d(in_ch, num_classes, 3, padding=rate, dilation=rate))


class VGGBranch(nn.Sequential):
    """fc6 (3x3 at ``rate``) -> fc7 (1x1) -> fc8 (scores), as in Fig. 7 of the paper."""

    def __init__(self, in_ch: int, num_classes: int, rate: int, dropout: float = 0.5):
        super().__init__()
        self.fc6 = nn.Conv2d(in_ch, FC_CHANNELS, 3, padding=rate, dilation=rate)
        self.relu6, self.drop6 = nn.ReLU(inplace=True), nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1)
        self.relu7, self.drop7 = nn.ReLU(inplace=True), nn.Dropout(dropout)
        self.fc8 = score_layer(nn.Conv2d(FC_CHANNELS, num_classes, 1))


class ASPPSum(nn.Module):
    """ASPP of DeepLab v2: parallel atrous branches whose class scores are summed (§3.2)."""

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(dim=0)


class DeepLabV2(BackboneModel):
    """DeepLab v2 (ASPP-L) on a dilated ResNet or the DeepLab VGG16 trunk, output stride 8.

    Args:
        num_classes: number of output classes.
        backbone: ``resnet101`` (the paper's best) | ``resnet50`` | ``resnet152`` | ``vgg16``.
        aspp_rates: one branch per rate; (6, 12, 18, 24) = ASPP-L.
        msc_scales: input scales fused by max, e.g. (1.0, 0.75, 0.5); ``None`` = single scale.
        freeze_bn: keep BN statistics and affine parameters fixed (ResNet; the paper).
        pretrained: ImageNet weights for the trunk (and, for VGG16, decimated fc6/fc7 in every
            branch as in DeepLab-LargeFOV; which filters the authors kept is undocumented).
    """

    corner_aligned = True  # trained on k*OS+1 crops (models.base: aligned_stride)

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        aspp_rates: Sequence[int] = (6, 12, 18, 24),
        msc_scales: Sequence[float] | None = None,
        freeze_bn: bool = True,
        pretrained: bool = False,
    ):
        super().__init__()
        check_name(backbone, BACKBONES)
        if backbone == "vgg16":
            self.backbone = DeepLabVGG16(pretrained)
            branches = [VGGBranch(self.backbone.channels("out"), num_classes, r) for r in aspp_rates]
            if pretrained:
                fc = deeplab_fc_state_dict(vgg16_imagenet_state_dict())
                for branch in branches:
                    branch.load_state_dict(fc, strict=False)  # fc6, fc7; fc8 stays random
        else:
            self.backbone = ResNetBackbone(backbone, OUTPUT_STRIDE, (1, 1, 1), False, pretrained)
            branches = [resnet_branch(self.backbone.channels("out"), num_classes, r) for r in aspp_rates]
        self.aspp = ASPPSum(branches)
        self.msc_scales = tuple(msc_scales) if msc_scales else None
        self.freeze_bn = freeze_bn
        if freeze_bn:
            for module in self._batch_norms():
                module.requires_grad_(False)
        self.train()

    def _batch_norms(self):
        return (m for m in self.modules() if isinstance(m, nn.BatchNorm2d))

    def train(self, mode: bool = True) -> DeepLabV2:
        """As ``nn.Module.train``, but frozen BN layers stay in eval mode (use running stats)."""
        super().train(mode)
        if self.freeze_bn:
            for module in self._batch_norms():
                module.eval()
        return self

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at output stride 8 for one input scale."""
        return self.aspp(self.backbone(x)["out"])

    def multi_scale_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """MSC (§4.1): score maps of the rescaled inputs, resized to the largest one, max-fused.

        Returns the fused map and the per-scale maps (each at its own input's stride 8)."""
        h, w = x.shape[-2:]
        maps = []
        for s in self.msc_scales:
            size = (max(1, math.ceil(h * s)), max(1, math.ceil(w * s)))
            maps.append(self.scores(x if size == (h, w) else upsample(x, size)))
        size = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
        return torch.stack([upsample(m, size) for m in maps]).amax(dim=0), maps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.msc_scales:
            return {"out": upsample(self.scores(x), x.shape[-2:])}
        fused, per_scale = self.multi_scale_scores(x)
        outputs = {"out": upsample(fused, x.shape[-2:])}
        if self.training:  # one loss term per scale besides the fused one (deeplab-pytorch main.py)
            outputs["msc"] = [upsample(m, x.shape[-2:]) for m in per_scale]
        return outputs
