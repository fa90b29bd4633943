"""SegNet (Badrinarayanan, Kendall, Cipolla, TPAMI 2017, arXiv 1511.00561), as the
authors' reference Caffe net (alexgkendall/SegNet-Tutorial, ``segnet_train.prototxt``).

Reads like §3 of the paper:

* encoder: the 13 conv layers of VGG16, each conv -> BN -> ReLU, and five 2x2/2 max-pools
  that remember *where* each maximum came from (the "pooling indices"); no fully connected
  layers, which cuts VGG16's 134M parameters to 14.7M (§3);
* decoder: a mirror image of the encoder. Each stage upsamples by max-unpooling with the
  indices of the matching encoder pool -- no learned upsampling -- which yields a sparse
  map that the following conv -> BN -> ReLU layers densify;
* a final 3x3 conv to the classes (no BN/ReLU), followed by the softmax in the loss.

Every decoder layer is built explicitly (no module reuse by shallow copy, which would
silently share BN statistics and weights); the parameter-count test guards this.
"""
from __future__ import annotations

import torch
from torch import nn

from segbench.errors import WeightsNotAvailableError
from segbench.models.backbones.vgg import (
    check_pretrained_width,
    vgg16_imagenet_state_dict,
    vgg16_stages,
)
from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu
from segbench.models.layout import MaxUnpool2d


def he_conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 3, relu: bool = True,
                    bias: bool = True) -> list[nn.Module]:
    """conv-BN[-ReLU] with He ("msra") init and zero bias (reference prototxt); torchvision's
    defaults for BN."""
    layers = conv_bn_relu(in_ch, out_ch, kernel_size, bias=bias, relu=relu)
    nn.init.kaiming_normal_(layers[0].weight, mode="fan_in", nonlinearity="relu")
    if bias:
        nn.init.zeros_(layers[0].bias)
    return layers


class EncoderStage(nn.Module):
    """``n`` x (conv-BN-ReLU), then a 2x2/2 max-pool that returns its argmax indices (§3).

    Caffe rounds pooled sizes up (360 -> ... -> 45 -> 23), hence ``ceil_mode``.
    """

    def __init__(self, widths: list[int], kernel_size: int = 3, bias: bool = True):
        super().__init__()
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += he_conv_bn_relu(c_in, c_out, kernel_size, bias=bias)
        self.convs = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True, return_indices=True)

    def forward(self, x: torch.Tensor):
        x = self.convs(x)
        size = x.shape[-2:]
        x, indices = self.pool(x)
        return x, indices, size


class DecoderStage(nn.Module):
    """Max-unpool with the encoder's indices to the encoder's pre-pool size, then convs (§3).

    ``widths`` lists in/out channels of the convs; ``final_classes`` replaces the last
    conv-BN-ReLU by a plain 3x3 conv to the classes (``conv1_1_D`` in the reference).
    ``relu=False`` leaves the ReLU out (SegNet-Basic's decoder, §3.1).
    """

    def __init__(self, widths: list[int], final_classes: int | None = None, kernel_size: int = 3,
                 relu: bool = True, bias: bool = True):
        super().__init__()
        self.unpool = MaxUnpool2d(2, stride=2)  # nn.MaxUnpool2d without its fp32/NCHW detours (layout.py)
        layers = []
        pairs = list(zip(widths[:-1], widths[1:]))
        for c_in, c_out in pairs[:-1] if final_classes else pairs:
            layers += he_conv_bn_relu(c_in, c_out, kernel_size, relu=relu, bias=bias)
        if final_classes:
            layers.append(nn.Conv2d(widths[-2], final_classes, 3, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.convs(self.unpool(x, indices, output_size=size))


def encode_decode(encoder: nn.ModuleList, decoder: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Run the encoders, then the decoders deepest first, each unpooling with the indices (and
    to the size) its mirror encoder stage saved (§3)."""
    saved = []
    for stage in encoder:
        x, indices, size = stage(x)
        saved.append((indices, size))
    for stage in decoder:
        indices, size = saved.pop()
        x = stage(x, indices, size)
    return x


class SegNet(SegmentationModel):
    """SegNet on VGG16; ``forward`` returns ``{"out": N x C x H x W}`` for any H x W.

    ``base_channels`` scales all widths (64 = paper) for tests and CPU smoke runs;
    ``pretrained`` initialises the encoder from torchvision's ImageNet VGG16-BN (the
    paper/tutorial use Caffe VGG16 without BN; VGG16-BN matches the conv-BN-ReLU layout).
    """

    def __init__(self, num_classes: int, *, base_channels: int = 64, pretrained: bool = False):
        super().__init__()
        check_pretrained_width("segnet", pretrained, base_channels)
        stages = vgg16_stages(base_channels)  # [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]
        encoder_widths = []
        in_ch = 3
        for n_convs, width in stages:
            encoder_widths.append([in_ch] + [width] * n_convs)
            in_ch = width
        self.encoder = nn.ModuleList(EncoderStage(w) for w in encoder_widths)

        # Decoder stage s mirrors encoder stage s: the same widths read backwards, e.g.
        # stage 4: 512 -> 512 -> 512 -> 256; stage 1: 64 -> 64 -> classes (reference prototxt).
        decoder = [
            DecoderStage(w[::-1], final_classes=num_classes if s == 0 else None)
            for s, w in enumerate(encoder_widths)
        ]
        self.decoder = nn.ModuleList(reversed(decoder))  # applied deepest first
        if pretrained:
            self.load_imagenet_vgg16_bn()

    def load_imagenet_vgg16_bn(self) -> None:
        """Copy torchvision VGG16-BN's 13 conv + BN layers into the encoder, in order."""
        state = vgg16_imagenet_state_dict(batch_norm=True)
        src = [k.rsplit(".", 1)[0] for k in state if k.startswith("features.") and k.endswith("running_var")]
        convs = [k.rsplit(".", 1)[0] for k in state if k.startswith("features.") and state[k].dim() == 4]
        ours = [m for m in self.encoder.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        theirs = [p for pair in zip(convs, src) for p in pair]
        with torch.no_grad():
            for module, prefix in zip(ours, theirs, strict=True):
                for name, tensor in module.state_dict().items():
                    if f"{prefix}.{name}" in state:  # old files lack num_batches_tracked
                        tensor.copy_(state[f"{prefix}.{name}"])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": encode_decode(self.encoder, self.decoder, x)}


class SegNetBasic(SegmentationModel):
    """SegNet-Basic, the small SegNet of the decoder-variant study (§3.1, Table 1; the
    authors' ``Models/segnet_basic_train.prototxt`` in SegNet-Tutorial).

    * 4 encoders, each one 7x7 conv (64 maps) -> BN -> ReLU -> 2x2/2 max-pool with indices;
    * 4 decoders, each max-unpool with the matching encoder's indices -> 7x7 conv (64 maps) ->
      BN, with *no* ReLU ("no ReLU non-linearity is present in the decoder network", §3.1);
    * a 1x1 conv to the classes (``conv_classifier`` in the prototxt), then the softmax loss.

    ``conv_bias``: §3.1 says "no biases are used after convolutions"; the prototxt gives every
    conv a bias. Each conv is followed by BN, so a bias only shifts what BN subtracts again: the
    two nets compute the same function and differ by 512 parameters. Default: the paper.

    Parameters for 11 classes (64 maps, 7x7): conv weights 9,408 + 7 x 200,704 = 1,414,336;
    BN scale/shift 8 x 128 = 1,024; classifier 64 x 11 + 11 = 715; total 1,416,075 (paper)
    or 1,416,587 with the prototxt's conv biases. Table 1 states 1.425M; the 8.4K (0.6%) gap is
    not explained by any layer of the prototxt (counting BN running statistics adds 1,024; a
    7x7 classifier would give 1.45M), so we take the prototxt's layer list as the truth.
    """

    def __init__(self, num_classes: int, *, base_channels: int = 64, depth: int = 4,
                 kernel_size: int = 7, conv_bias: bool = False, pretrained: bool = False):
        super().__init__()
        if pretrained:
            raise WeightsNotAvailableError("segnet_basic: the paper trains it from scratch (He init, §3.2) and "
                                           "no ImageNet weights exist; set model.pretrained=false")
        c = base_channels
        self.encoder = nn.ModuleList(
            EncoderStage([3 if s == 0 else c, c], kernel_size, bias=conv_bias) for s in range(depth))
        self.decoder = nn.ModuleList(
            DecoderStage([c, c], kernel_size=kernel_size, relu=False, bias=conv_bias) for _ in range(depth))
        self.classifier = nn.Conv2d(c, num_classes, 1)
        nn.init.kaiming_normal_(self.classifier.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.classifier.bias)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.bias, 0.001)  # the prototxt's BN shift_filler

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(encode_decode(self.encoder, self.decoder, x))}
