"""Dilated ResNet-50/101/152 trunks for PSPNet and DeepLab v2/v3/v3+.

The trunk returns named intermediate features, as torchvision's ``IntermediateLayerGetter``:

* ``low``  -- ``layer1`` output, 256 ch, stride 4 (DeepLab v3+ decoder, v3+ §3.2);
* ``aux``  -- ``layer3`` output, 1024 ch (PSPNet's auxiliary loss on res4b22, PSPNet §3.4);
* ``out``  -- ``layer4`` output, 2048 ch, at the requested output stride 8, 16 or 32.

Two stems, both loaded through the libraries' own weight APIs:

* plain 7x7 stem: torchvision ``resnet50/101/152`` (ImageNet ``IMAGENET1K_V1``, the original
  training recipe rather than the 2021 "V2" one, to stay close to the papers' ImageNet init);
* deep stem (three 3x3 convs 64-64-128, "ResNet-103" as PSPNet's authors and DeepLab's
  ``resnet_v1_101_beta`` call it): timm ``resnet50s/101s/152s`` (gluon ``v1s`` weights). The
  64-64-128 widths are exactly hszhao/semseg's ``deep_base``; mmseg's ``ResNetV1c`` is the
  narrower 32-32-64 stem (timm ``resnet101c``).

Output stride. Both libraries can dilate at build time (torchvision
``replace_stride_with_dilation``, timm ``output_stride``), but we dilate ourselves, in place,
for three reasons: DeepLab v3/v3+ train at OS 16 and are evaluated at OS 8 with the same
weights (:meth:`ResNetBackbone.set_output_stride`); DeepLab v3's Multi-Grid sets per-block
rates in the last stage (v3 §3.2); and the papers' networks (Caffe PSPNet and DeepLab v2,
hszhao/semseg, DeepLab v3 Multi-Grid) use the stage's full rate in *every* block of a dilated
stage, whereas torchvision/timm keep the previous rate in the stage's first block. Parameter
counts are unaffected.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from segbench.errors import SegbenchError
from segbench.models.backbones.base import Backbone, FeatureInfo
from segbench.models.backbones.weights import timm_model, torchvision_state_dict

#: Valid ``backbone`` names (bottleneck ResNets) and the channels of the features returned.
RESNETS = ("resnet50", "resnet101", "resnet152")
OUT_CHANNELS = {"low": 256, "aux": 1024, "out": 2048}
OUTPUT_STRIDES = (8, 16, 32)
#: The papers' width (channels of ``layer1``'s 3x3 convs) and the blocks per stage.
WIDTH = 64
DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
#: ImageNet weights of the plain stem (torchvision) and of the deep stem (timm tag).
TORCHVISION_WEIGHTS = "IMAGENET1K_V1"
TIMM_DEEP_STEM_TAG = "gluon_in1k"


def torchvision_model(name: str, pretrained: bool) -> nn.Module:
    """``torchvision.models.<name>``, with ImageNet weights from the torch hub cache if ``pretrained``
    (what ``get_model(name, weights=...)`` does, with segbench's offline error)."""
    net = torchvision.models.get_model(name)
    if pretrained:
        net.load_state_dict(torchvision_state_dict(torchvision.models.get_model_weights(name)[TORCHVISION_WEIGHTS]))
    return net


def narrow_resnet(name: str, width: int, deep_stem: bool, pretrained: bool) -> nn.Module:
    """The ResNet ``name`` with every stage ``width / 64`` as wide (timm's ``channels`` and
    ``stem_width``): the architecture at a cost a CPU test or benchmark can pay. No ImageNet
    weights exist for it."""
    if pretrained:
        raise SegbenchError(f"backbone width {width}: ImageNet weights exist only at width {WIDTH}; "
                            f"set pretrained=false or width={WIDTH}")
    from timm.models.resnet import Bottleneck, ResNet  # imported here, as in weights.timm_model

    return ResNet(Bottleneck, DEPTHS[name], channels=tuple(width * m for m in (1, 2, 4, 8)), stem_width=width,
                  stem_type="deep" if deep_stem else "")


def check_name(name: str, valid: Sequence[str]) -> None:
    """Reject an unknown backbone name with the list of valid ones (a user error)."""
    if name not in valid:
        raise SegbenchError(f"unknown backbone '{name}'; valid: {', '.join(valid)}")


# --------------------------------------------------------------------------------------
# The trunk
# --------------------------------------------------------------------------------------
class ResNetBackbone(Backbone):
    """ResNet trunk (no pooling/fc) returning ``{"low", "aux", "out"}`` features.

    Args:
        name: ``resnet50`` | ``resnet101`` | ``resnet152``.
        output_stride: 8, 16 or 32; the stages past it are dilated instead of strided.
        multi_grid: unit rates of the three blocks of ``layer4``, multiplied by the stage's
            rate (DeepLab v3 §3.2 "Multi-grid Method", (1, 2, 4) in the paper).
        deep_stem: three 3x3 convs (64-64-128) instead of the 7x7 conv (PSPNet, DeepLab TF).
        width: channels of ``layer1``'s convs, 64 in the papers; less narrows every stage alike
            (:func:`narrow_resnet`, tests and CPU benchmarks).
        pretrained: load ImageNet weights (cached; never downloaded in tests).
    """

    def __init__(
        self,
        name: str = "resnet101",
        output_stride: int = 8,
        multi_grid: Sequence[int] = (1, 1, 1),
        deep_stem: bool = False,
        pretrained: bool = False,
        width: int = WIDTH,
    ):
        super().__init__()
        check_name(name, RESNETS)
        self.width = int(width)
        if self.width != WIDTH:
            net = narrow_resnet(name, self.width, deep_stem, pretrained)
            act = net.act1
        elif deep_stem:
            net = timm_model(name + "s", TIMM_DEEP_STEM_TAG, pretrained)
            act = net.act1
        else:
            net = torchvision_model(name, pretrained)
            act = net.relu
        # avgpool/fc are left out: a segmentation trunk is the conv layers only.
        self.stem = nn.Sequential(net.conv1, net.bn1, act, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if len(multi_grid) != len(self.layer4):
            raise SegbenchError(
                f"multi_grid needs one rate per block of layer4 ({len(self.layer4)}), got {list(multi_grid)}"
            )
        self.multi_grid = tuple(int(r) for r in multi_grid)
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Re-dilate in place (same weights): stages past ``output_stride`` lose their stride
        and multiply their rate by 2, as in DeepLab v2 §3.1 / v3 §3.1 ("atrous convolution"),
        so that DeepLab v3 can be trained at OS 16 and evaluated at OS 8 (v3 §4.1)."""
        if output_stride not in OUTPUT_STRIDES:
            raise SegbenchError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        stride, rate = 4, 1  # after the stem: conv1 (stride 2) + max-pool (stride 2)
        for layer in (self.layer2, self.layer3, self.layer4):
            if stride < output_stride:
                layer_stride, stride = 2, stride * 2
            else:
                layer_stride, rate = 1, rate * 2
            unit_rates = self.multi_grid if layer is self.layer4 else (1,) * len(layer)
            _configure_stage(layer, layer_stride, [rate * r for r in unit_rates])
        self.output_stride = output_stride

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        # layer1 works at stride 4, layer3 at 16 unless the output stride caps it
        channels = {key: c * self.width // WIDTH for key, c in OUT_CHANNELS.items()}
        return (FeatureInfo("low", channels["low"], 4),
                FeatureInfo("aux", channels["aux"], min(16, self.output_stride)),
                FeatureInfo("out", channels["out"], self.output_stride))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # the stem as one checkpointed unit, the stages block by block (Backbone.run)
        x = self.run(self.stem, x)
        low = self.run_blocks(self.layer1, x)
        aux = self.run_blocks(self.layer3, self.run_blocks(self.layer2, low))
        return {"low": low, "aux": aux, "out": self.run_blocks(self.layer4, aux)}


def _configure_stage(layer: nn.Sequential, stride: int, rates: Sequence[int]) -> None:
    """Set the stride of a stage's first block and the rate of every block's 3x3 conv.

    Bottlenecks of both libraries put the stride on ``conv2`` (the 3x3, "ResNet v1.5") and
    on ``downsample[0]`` (the 1x1 projection)."""
    for i, (block, rate) in enumerate(zip(layer, rates)):
        s = stride if i == 0 else 1
        block.conv2.stride = (s, s)
        block.conv2.dilation = (rate, rate)
        block.conv2.padding = (rate, rate)  # keeps a 3x3 conv "same"-sized at any rate
        if block.downsample is not None:
            block.downsample[0].stride = (s, s)
