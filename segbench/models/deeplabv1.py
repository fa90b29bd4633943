"""DeepLab v1, LargeFOV variant (Chen, Papandreou, Kokkinos, Murphy, Yuille, ICLR 2015,
arXiv 1412.7062) -- the network of "DeepLab-CRF-LargeFOV" without the CRF.

Reads like v1 §3.1 and §4.1:

* VGG16 with pool4/pool5 at stride 1 and conv5 dilated by 2: output stride 8
  (:class:`segbench.models.backbones.vgg.DeepLabVGG16`);
* LargeFOV head: fc6 = 3x3 conv, dilation ("input stride") 12, 1024 channels; fc7 = 1x1,
  1024 channels; dropout 0.5 after each; fc8 = 1x1 conv to the classes;
* the stride-8 score map is bilinearly upsampled to the input size (v1 §3.2).

The fully connected CRF is a separate post-processing step (``segbench.models.crf``,
``postprocess=crf``), as in the paper, where it is not trained jointly.
"""
from __future__ import annotations

import torch
from torch import nn

from segbench.models.backbones.vgg import (
    DeepLabVGG16,
    check_pretrained_width,
    conv_layers,
    copy_vgg16_convs,
    deeplab_fc_state_dict,
    features_only,
    he_init,
    vgg16_imagenet_state_dict,
)
from segbench.models.base import BackboneModel
from segbench.models.blocks import upsample


class LargeFOVHead(nn.Module):
    """fc6 (3x3, dilation 12) -> fc7 (1x1) -> fc8, each fc with ReLU + dropout 0.5 (v1 §4.1).

    ``pool5a``: the released LargeFOV prototxt averages pool5 over 3x3 (stride 1, pad 1)
    before fc6 (as reproduced in public ports of the prototxt; not described in the paper
    text). It has no parameters and keeps the stride.
    """

    def __init__(self, num_classes: int, channels: int = 1024, dilation: int = 12,
                 dropout: float = 0.5, in_channels: int = 512):
        super().__init__()
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.fc8 = nn.Conv2d(channels, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)  # Caffe's Dropout is element-wise
        he_init(self.fc6)  # replaced by decimated VGG weights when pretrained
        he_init(self.fc7)
        # v1 §4.1 / prototxt: the new classifier starts from Gaussian(0, 0.01), zero bias.
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.relu(self.fc6(self.pool5a(x))))
        x = self.drop(self.relu(self.fc7(x)))
        return self.fc8(x)


class DeepLabV1(BackboneModel):
    """DeepLab-LargeFOV: ``forward`` returns ``{"out": N x C x H x W}`` logits.

    ``pretrained`` loads torchvision's ImageNet VGG16 into the convs and the decimated
    fully connected layers into fc6/fc7 (every 4th filter, taps 0/3/6 of the 7x7 kernel).
    Parameters: 20.5M for 21 classes (v1 Table 2).
    """

    corner_aligned = True  # trained on k*OS+1 crops (models.base: aligned_stride)

    def __init__(
        self,
        num_classes: int,
        *,
        base_channels: int = 64,
        fc_channels: int = 1024,
        fc6_dilation: int = 12,
        dropout: float = 0.5,
        pretrained: bool = False,
    ):
        super().__init__()
        check_pretrained_width("deeplabv1", pretrained, base_channels)
        self.backbone = DeepLabVGG16(pretrained=False, base_channels=base_channels)
        self.classifier = LargeFOVHead(
            num_classes, fc_channels, fc6_dilation, dropout, in_channels=self.backbone.channels("out")
        )
        if pretrained:
            self.load_imagenet_vgg16()

    def load_imagenet_vgg16(self) -> None:
        state = vgg16_imagenet_state_dict()
        copy_vgg16_convs(features_only(state), conv_layers(self.backbone))
        fc = deeplab_fc_state_dict(state, channels=self.classifier.fc7.out_channels,
                                   kernel_size=self.classifier.fc6.kernel_size[0])
        self.classifier.load_state_dict(fc, strict=False)  # fc8 stays freshly initialised

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        score = self.classifier(self.backbone(x)["out"])
        # Caffe's Interp layer maps corner to corner; a 321 crop gives a 41 map and
        # (41 - 1) * 8 + 1 = 321, so the aligned corners reproduce it exactly.
        return {"out": upsample(score, size)}

