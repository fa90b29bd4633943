"""Fully Convolutional Networks (Long, Shelhamer, Darrell, CVPR 2015, arXiv 1411.4038):
FCN-32s, FCN-16s and FCN-8s on VGG16, as in the authors' reference Caffe nets
(shelhamer/fcn.berkeleyvision.org, ``voc-fcn{32,16,8}s/net.py``).

Reads like the paper:

* §3.1 -- VGG16 "convolutionalized": conv1_1 is padded by 100 so that any input size
  survives the 7x7 fc6; fc6 (7x7, 4096) and fc7 (1x1, 4096) carry the reshaped ImageNet
  classifier weights (:func:`segbench.models.backbones.vgg.vgg16_fc_as_conv`); dropout 0.5;
* §4.1 -- ``score_fr``: a 1x1 conv to the classes, zero-initialised;
* §4.2 -- skips: 1x1 scores on pool4 (16s) and pool3 (8s), zero-initialised, fused with the
  2x-upsampled coarser scores by summation;
* §3.3 -- upsampling by transposed convolutions initialised to bilinear interpolation; the
  reference keeps all of them fixed (``learn_upsampling=False``); the paper learns the
  intermediate ones and fixes the final one (``learn_upsampling=True``);
* crops back to the input with the reference's offsets (derived below).
"""
from __future__ import annotations

import torch
from torch import nn

from segbench.errors import SegbenchError
from segbench.models.backbones.vgg import (
    FCNVGG16,
    check_pretrained_width,
    conv_layers,
    copy_vgg16_convs,
    features_only,
    he_init,
    vgg16_fc_as_conv,
    vgg16_imagenet_state_dict,
    vgg16_stages,
)
from segbench.models.base import BackboneModel

# Crop offsets, from Caffe's coordinate maps (a conv/pool of kernel k, stride s, pad p maps
# output y to input s*y + (k-1)/2 - p; a deconv inverts that). In input pixels:
#   pool3 = 8y - 95.5, pool4 = 16y - 91.5, score_fr = 32y + 12.5 (pad 100, fc6 7x7);
#   upscore2(score_fr) = 16z - 11.5 = pool4 at z + 5        -> score_pool4 offset 5
#   upscore_pool4(fuse_pool4) = 8z - 23.5 = pool3 at z + 9   -> score_pool3 offset 9
#   final: 32s: z - 19; 16s: z - 27; 8s: z - 31             -> output crop 19 / 27 / 31
OFFSET_POOL4, OFFSET_POOL3 = 5, 9
OUTPUT_OFFSET = {32: 19, 16: 27, 8: 31}


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Caffe's "bilinear" filler on the diagonal (channel c -> channel c), as in the reference
    ``surgery.interp``: upsampling by interpolation, no mixing of class scores."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    weight[range(channels), range(channels)] = torch.outer(filt1d, filt1d)
    return weight.float()


def upsampler(channels: int, factor: int, learnable: bool) -> nn.ConvTranspose2d:
    """Transposed conv, kernel 2*factor, stride factor, no bias, bilinear-initialised (§3.3)."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    up.weight.requires_grad_(learnable)
    return up


def crop(x: torch.Tensor, offset: int, like: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    h, w = like.shape[-2:] if isinstance(like, torch.Tensor) else like
    return x[..., offset : offset + h, offset : offset + w]


class FCN(BackboneModel):
    """FCN-``stride``s on VGG16; ``stride`` is 32, 16 or 8 (the stride of the final score map).

    ``forward`` returns ``{"out": N x C x H x W}``. ``base_channels`` narrows the net for
    tests (64 = VGG16; fc6/fc7 get ``64 * base_channels`` channels). ``at_once`` scales
    pool4 by 0.01 and pool3 by 1e-4 before scoring, as the reference's "voc-fcn8s-atonce"
    net does to train all skips from the start; the staged ("heavy") reference does not.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        stride: int = 8,
        base_channels: int = 64,
        dropout: float = 0.5,
        learn_upsampling: bool = False,
        at_once: bool = False,
        pretrained: bool = False,
    ):
        super().__init__()
        if stride not in OUTPUT_OFFSET:
            raise SegbenchError(f"fcn: stride must be 32, 16 or 8, got {stride}")
        self.stride = stride
        self.at_once = at_once
        check_pretrained_width("fcn", pretrained, base_channels)
        c3, c4, c5 = (w for _, w in vgg16_stages(base_channels)[2:])
        fc_width = 64 * base_channels  # 4096 for VGG16
        self.backbone = FCNVGG16(base_channels)
        # §3.1: the classifier as convolutions; dropout as in VGG's classifier.
        self.fc6 = nn.Conv2d(c5, fc_width, 7)
        self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        if stride <= 16:  # §4.2: 2x up on the stride-32 scores, fuse with pool4
            self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
            self.upscore2 = upsampler(num_classes, 2, learn_upsampling)
        if stride == 8:  # and once more with pool3
            self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
            self.upscore_pool4 = upsampler(num_classes, 2, learn_upsampling)
        # §4.2: "the final layer deconvolutional filters are fixed to bilinear interpolation".
        self.upscore = upsampler(num_classes, stride, learnable=False)
        self._init_weights()
        if pretrained:
            self.load_imagenet_vgg16()

    @property
    def output_stride(self) -> int:
        """The final score map's stride, FCN-``stride``s (the trunk's own is 32)."""
        return self.stride

    def _init_weights(self) -> None:
        """torchvision's VGG init for the trunk/fc; zero scoring layers (§4.1: "random
        initialization [yields] neither better performance nor faster convergence")."""
        for m in [*conv_layers(self.backbone), self.fc6, self.fc7]:
            he_init(m)
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)

    def load_imagenet_vgg16(self, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Copy a torchvision VGG16 state dict (ImageNet by default) into the trunk and fc6/fc7."""
        state = vgg16_imagenet_state_dict() if state_dict is None else state_dict
        copy_vgg16_convs(features_only(state), conv_layers(self.backbone))
        fc = vgg16_fc_as_conv(state)
        with torch.no_grad():
            for name in ("fc6", "fc7"):
                getattr(self, name).weight.copy_(fc[f"{name}.weight"])
                getattr(self, name).bias.copy_(fc[f"{name}.bias"])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        h = self.drop(self.relu(self.fc6(feats["out"])))
        h = self.drop(self.relu(self.fc7(h)))
        score = score_in_fp32_on_cpu(self.score_fr, h)  # stride 32

        if self.stride <= 16:
            score = self.upscore2(score)
            pool4 = feats["pool4"] * 0.01 if self.at_once else feats["pool4"]
            score = score + crop(self.score_pool4(pool4), OFFSET_POOL4, score)  # stride 16
        if self.stride == 8:
            score = self.upscore_pool4(score)
            pool3 = feats["pool3"] * 1e-4 if self.at_once else feats["pool3"]
            score = score + crop(self.score_pool3(pool3), OFFSET_POOL3, score)  # stride 8
        out = self.upscore(score)
        return {"out": crop(out, OUTPUT_OFFSET[self.stride], x.shape[-2:])}


def score_in_fp32_on_cpu(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
    """``conv(h)``, but in fp32 under CPU bf16 autocast when it maps 4096 channels to < 16.

    torch 2.14.1's oneDNN bf16 kernels corrupt the heap in the backward of a 1x1 convolution
    from 4096 channels to fewer than 16 (the process aborts: "free(): invalid next size"),
    in NCHW and channels_last alike, on AVX512-BF16/AMX CPUs; 2048 or fewer inputs, 16 or more
    outputs and fp32 are fine. That is ``score_fr`` of an FCN with fewer than 16 classes
    (CamVid: 11) whenever ``precision: auto`` picks bf16. The layer is a tiny share of FCN's
    FLOPs, so running it in fp32 costs nothing measurable (tests/unit/test_fcn_bf16.py).
    """
    if (h.device.type == "cpu" and torch.is_autocast_enabled("cpu") and conv.in_channels >= 4096
            and conv.out_channels < 16):
        with torch.autocast("cpu", enabled=False):
            return conv(h.float())
    return conv(h)
