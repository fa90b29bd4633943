"""VGG16 (Simonyan & Zisserman, ICLR 2015) as used by FCN, SegNet and DeepLab v1/v2.

What several papers share lives here:

* :func:`vgg16_imagenet_state_dict` -- torchvision's ImageNet VGG16(-BN) weights (through
  :mod:`segbench.models.backbones.weights`, with its offline error);
* :class:`FCNVGG16` -- FCN's trunk (conv1_1 padded by 100, pool3/pool4/pool5 returned) and
  :func:`vgg16_fc_as_conv`, FCN's "convolutionalization" of the classifier (FCN §3.1):
  fc6 (25088 -> 4096) becomes a 7x7 conv, fc7 (4096 -> 4096) a 1x1 conv;
* :class:`DeepLabVGG16` -- DeepLab's modified trunk (output stride 8) and
  :func:`deeplab_fc_state_dict`, the decimated fc6/fc7 of DeepLab-LargeFOV.

SegNet's encoder is VGG16 too, but it is no backbone: each stage hands its pooling indices to
the mirror decoder stage (:mod:`segbench.models.segnet`).

Note on input conventions: the papers' Caffe VGG16 takes BGR 0..255 minus the mean pixel;
torchvision's takes RGB normalised by the ImageNet mean/std. segbench feeds torchvision's
convention everywhere, which is what these weights expect.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import VGG16_BN_Weights, VGG16_Weights

from segbench.errors import SegbenchError
from segbench.models.backbones.base import Backbone, FeatureInfo
from segbench.models.backbones.weights import torchvision_state_dict

#: Convolutions per VGG16 stage and their output widths (configuration "D").
VGG16_STAGES: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def vgg16_stages(base_channels: int = 64) -> list[tuple[int, int]]:
    """``VGG16_STAGES`` with widths scaled by ``base_channels / 64`` (64 = VGG16 itself).

    Narrow nets exist for tests and CPU smoke runs; ImageNet weights need 64.
    """
    return [(n, width * base_channels // 64) for n, width in VGG16_STAGES]


def check_pretrained_width(name: str, pretrained: bool, base_channels: int) -> None:
    if pretrained and base_channels != 64:
        raise SegbenchError(
            f"{name}: ImageNet VGG16 weights need base_channels=64, got {base_channels}; "
            "set model.pretrained=false for a narrow net"
        )


def he_init(conv: nn.Conv2d) -> None:
    """He init with zero bias, as torchvision's VGG (PyTorch's default init shrinks the
    signal through 13+ layers, so a from-scratch VGG would not train)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)


def conv_layers(module: nn.Module) -> list[nn.Conv2d]:
    """The ``Conv2d`` layers of ``module`` in definition order (to copy VGG weights by order)."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def copy_vgg16_convs(
    source_features: dict[str, torch.Tensor], targets: list[nn.Conv2d]
) -> None:
    """Copy the 13 conv layers of a torchvision VGG16 ``features`` state dict into ``targets``."""
    weights = [k for k in source_features if k.endswith(".weight") and source_features[k].dim() == 4]
    if len(weights) != 13 or len(targets) != 13:
        raise ValueError(f"expected 13 VGG16 convs, got {len(weights)} -> {len(targets)}")
    with torch.no_grad():
        for key, conv in zip(weights, targets):
            conv.weight.copy_(source_features[key])
            conv.bias.copy_(source_features[key[: -len("weight")] + "bias"])


def features_only(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``features.*`` entries of a torchvision VGG state dict, prefix kept."""
    return {k: v for k, v in state_dict.items() if k.startswith("features.")}


def vgg16_fc_as_conv(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reshape torchvision VGG16's classifier Linear layers into conv weights (FCN §3.1).

    ``classifier.0`` (4096 x 25088, input flattened as C x 7 x 7) -> ``fc6`` 4096 x 512 x 7 x 7;
    ``classifier.3`` (4096 x 4096) -> ``fc7`` 4096 x 4096 x 1 x 1. A 7x7 conv at pool5 of a
    224 image then computes exactly the Linear layer; on larger images it slides.
    """
    fc6_w = state_dict["classifier.0.weight"]
    fc7_w = state_dict["classifier.3.weight"]
    return {
        "fc6.weight": fc6_w.reshape(fc6_w.shape[0], 512, 7, 7),
        "fc6.bias": state_dict["classifier.0.bias"],
        "fc7.weight": fc7_w.reshape(fc7_w.shape[0], fc7_w.shape[1], 1, 1),
        "fc7.bias": state_dict["classifier.3.bias"],
    }


def vgg16_imagenet_state_dict(batch_norm: bool = False) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet VGG16 (or VGG16-BN) weights, via the ``weights=`` enums."""
    weights = VGG16_BN_Weights.IMAGENET1K_V1 if batch_norm else VGG16_Weights.IMAGENET1K_V1
    return torchvision_state_dict(weights)


# --------------------------------------------------------------------------------------
# FCN's VGG16 (FCN §3.1, reference voc-fcn*/net.py)
# --------------------------------------------------------------------------------------
class FCNVGG16(Backbone):
    """conv1_1..pool5, one ``nn.Sequential`` per stage (``stage1`` ...) so pool3/pool4 can be
    tapped: returns ``{"pool3", "pool4", "out"}`` (pool5) at strides 8, 16, 32.

    conv1_1 is padded by 100 (reference net.py) so that any input survives fc6's 7x7; pools are
    2x2/2 rounding up like Caffe. Weights are initialised by :class:`~segbench.models.fcn.FCN`
    (with fc6/fc7, in the order the seeded runs rely on)."""

    output_stride = 32

    def __init__(self, base_channels: int = 64):
        super().__init__()
        in_ch = 3
        for s, (n_convs, width) in enumerate(vgg16_stages(base_channels), start=1):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(1, n_convs + 1):
                pad = 100 if (s, i) == (1, 1) else 1
                layers[f"conv{s}_{i}"] = nn.Conv2d(in_ch, width, 3, padding=pad)
                layers[f"relu{s}_{i}"] = nn.ReLU(inplace=True)
                in_ch = width
            layers[f"pool{s}"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
            self.add_module(f"stage{s}", nn.Sequential(layers))
        widths = [w for _, w in vgg16_stages(base_channels)]
        self._info = (FeatureInfo("pool3", widths[2], 8), FeatureInfo("pool4", widths[3], 16),
                      FeatureInfo("out", widths[4], 32))

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        return self._info

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for name, stage in self.named_children():  # one checkpointed unit per stage
            x = features[name] = self.run(stage, x)
        return {"pool3": features["stage3"], "pool4": features["stage4"], "out": x}


# --------------------------------------------------------------------------------------
# DeepLab's VGG16 (DeepLab v1 §3.1 / §4.1; v2 §4.1)
# --------------------------------------------------------------------------------------
class DeepLabVGG16(Backbone):
    """VGG16 conv1_1..pool5 modified by DeepLab for a denser output (v1 §3.1, "hole" algorithm).

    * pool1-pool3: 3x3, stride 2, pad 1 (the Caffe prototxt's choice; Caffe rounds up, hence
      ``ceil_mode``: a 321 crop gives 161, 81, 41);
    * pool4, pool5: 3x3, stride 1, pad 1 -- subsampling skipped after the last two pools;
    * conv5_x: dilation 2 to keep the receptive field the skipped pool4 would have given.

    Returns ``{"out": 512 channels (8 * base_channels) at output stride 8}``. Layers are named as
    in the prototxt (``conv1_1``, ``pool1`` ...), flat, as DeepLab's checkpoints have them;
    checkpointing runs them in five segments, each ending at a pool. ``pretrained`` copies
    torchvision's ImageNet VGG16 convs (dilation does not change the weights' shapes).
    """

    output_stride = 8

    def __init__(self, pretrained: bool = False, base_channels: int = 64):
        super().__init__()
        check_pretrained_width("deeplab_vgg16", pretrained, base_channels)
        in_ch = 3
        for stage, (n_convs, width) in enumerate(vgg16_stages(base_channels), start=1):
            dilation = 2 if stage == 5 else 1
            for i in range(1, n_convs + 1):
                self.add_module(f"conv{stage}_{i}", nn.Conv2d(in_ch, width, 3, padding=dilation, dilation=dilation))
                self.add_module(f"relu{stage}_{i}", nn.ReLU(inplace=True))
                in_ch = width
            stride = 2 if stage <= 3 else 1
            self.add_module(f"pool{stage}", nn.MaxPool2d(3, stride=stride, padding=1, ceil_mode=True))
        for conv in conv_layers(self):  # trained from scratch only in tests / ablations
            he_init(conv)
        self._info = (FeatureInfo("out", in_ch, self.output_stride),)
        if pretrained:
            copy_vgg16_convs(features_only(vgg16_imagenet_state_dict()), conv_layers(self))

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        return self._info

    def segments(self) -> list[tuple[nn.Module, ...]]:
        """The layers in order, cut after each pooling layer (five segments)."""
        segments, current = [], []
        for layer in self.children():
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                segments.append(tuple(current))
                current = []
        return segments

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for segment in self.segments():
            x = self.run(_in_sequence, segment, x, modules=segment)
        return {"out": x}


def _in_sequence(layers: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


def deeplab_fc_state_dict(
    state_dict: dict[str, torch.Tensor], channels: int = 1024, kernel_size: int = 3
) -> dict[str, torch.Tensor]:
    """fc6/fc7 for DeepLab's reduced heads from VGG16's fully connected layers.

    DeepLab v1 §4.1: fc6 is "subsampled (by decimation)" from 7x7 to ``kernel_size`` (3x3 ->
    taps 0, 3, 6) and LargeFOV keeps 1,024 of the 4,096 filters in fc6 and fc7. Which
    filters the authors kept is not documented (their released init was ``vgg16_20M``);
    segbench keeps every 4th, deterministically.
    """
    conv = vgg16_fc_as_conv(state_dict)
    keep = torch.arange(0, conv["fc6.weight"].shape[0], conv["fc6.weight"].shape[0] // channels)
    taps = torch.linspace(0, 6, kernel_size).round().long()
    fc6 = conv["fc6.weight"][keep][:, :, taps][:, :, :, taps]
    fc7 = conv["fc7.weight"][keep][:, keep]
    return {
        "fc6.weight": fc6.contiguous(),
        "fc6.bias": conv["fc6.bias"][keep].clone(),
        "fc7.weight": fc7.contiguous(),
        "fc7.bias": conv["fc7.bias"][keep].clone(),
    }
