"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015, arXiv 1505.04597).

Reads like §2 and Fig. 1 of the paper:

* contracting path: 5 levels of two 3x3 convolutions + ReLU, a 2x2 max-pool (stride 2)
  between levels, channels doubling 64 -> 1024;
* expansive path: a 2x2 "up-convolution" (transposed conv, stride 2) that halves the
  channels, followed by a ReLU as in the authors' released net (``phseg_v5-train.prototxt``:
  ``relu_u3a`` ... after every ``upconv_*``; Fig. 1 does not draw it), concatenation with the
  (center-cropped) encoder map of the same level, two 3x3 convolutions + ReLU;
* a final 1x1 convolution to the classes (23 conv layers in total).

``padding="valid"`` is the paper (unpadded convs: a 572x572 tile gives a 388x388 map);
``padding="same"`` pads every 3x3 conv by 1, the common modern variant. ``batch_norm``
(not in the 2015 paper) adds BN after each 3x3 conv for fast convergence from scratch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import SegbenchError, WeightsNotAvailableError
from segbench.models.base import SegmentationModel

#: Four 2x2 max-pools: spatial sizes must be divisible by 2**4 wherever a pool is applied.
DEPTH = 4
#: Border lost per side in valid mode: 2 px per 3x3 conv, two convs per level, scaled by
#: the level's stride: 2*(1+2+4+8) on the way down + 2*16 at the bottom + 2*(8+4+2+1) up.
VALID_MARGIN = 92


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by ReLU (paper §2); optionally BN in between."""

    def __init__(self, in_ch: int, out_ch: int, padding: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers.append(nn.Conv2d(c_in, out_ch, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def center_crop(skip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the encoder map to the decoder map's size: "cropping is necessary due to the
    loss of border pixels in every convolution" (paper §2)."""
    top = (skip.shape[-2] - size[0]) // 2
    left = (skip.shape[-1] - size[1]) // 2
    return skip[..., top : top + size[0], left : left + size[1]]


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect-pad by any amount: "the missing context is extrapolated by mirroring the
    input image" (paper §2, Fig. 2). Reflection needs pad < size, so large pads (small
    images, e.g. 32x32 with a 92 px margin) are applied in several reflections."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        if h == 1 or w == 1:  # nothing to reflect about: repeat the edge instead
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step))
    return x


class UNet(SegmentationModel):
    """U-Net for ``num_classes`` classes; ``forward`` returns ``{"out": N x C x H x W}``.

    Output always equals the input size:

    * ``same``: the input is mirror-padded up to a multiple of 16 (four 2x2 pools), the
      net is run and the logits are cropped back.
    * ``valid``: overlap-tile inference (paper §2, Fig. 2). The net maps a tile of size
      ``t = 16k + 124`` to ``t - 184`` output pixels, each seeing its 92 px context on every
      side. The input is mirror-padded by 92 px at top/left and by enough at bottom/right
      to reach the next legal tile size, so output pixel (i, j) is exactly input pixel
      (i, j); the surplus bottom/right rows are cropped. The whole image is one tile:
      with unpadded convs, splitting it into tiles at offsets that are multiples of 16
      gives the same logits, so tiling is a memory concern left to sliding-window
      inference in the engine.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        base_channels: int = 64,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float = 0.5,
        up_relu: bool = True,
        tile_context: bool = False,
        pretrained: bool = False,
    ):
        super().__init__()
        if padding not in ("valid", "same"):
            raise SegbenchError(f"unet: padding must be 'valid' or 'same', got {padding!r}")
        if pretrained:
            raise WeightsNotAvailableError(
                "unet: the paper trains from scratch and no ImageNet weights exist; "
                "set model.pretrained=false"
            )
        self.padding = padding
        self.up_relu = up_relu
        self.tile_context = tile_context
        pad = 1 if padding == "same" else 0
        widths = [base_channels * 2**i for i in range(DEPTH + 1)]  # 64 ... 1024

        # Contracting path (paper §2, left side of Fig. 1).
        self.down = nn.ModuleList()
        c_in = in_channels
        for w in widths:
            self.down.append(DoubleConv(c_in, w, pad, batch_norm))
            c_in = w
        self.pool = nn.MaxPool2d(2, 2)
        # "Drop-out layers at the end of the contracting path" (paper §3.1); the released
        # Caffe model puts them after the two deepest levels (unverified).
        self.dropout = nn.Dropout(dropout)

        # Expansive path (right side of Fig. 1): up-conv halves channels, concat restores.
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(2 * w, w, kernel_size=2, stride=2))
            self.up_conv.append(DoubleConv(2 * w, w, pad, batch_norm))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Gaussian with std sqrt(2/N), N = fan-in (paper §3), i.e. He init; zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                else:  # each output of a 2x2/2 up-conv sees one pixel of every channel
                    fan_in = m.weight.shape[0] * m.weight[0, 0].numel() // math.prod(m.stride)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- the U ---------------------------------------------------------------------------
    def forward_tile(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)
            if level >= DEPTH - 1:
                x = self.dropout(x)
            skips.append(x)
        skips.pop()  # the bottom level is not a skip
        for up, conv in zip(self.up, self.up_conv):
            x = up(x)
            if self.up_relu:
                x = F.relu(x)
            x = conv(torch.cat([center_crop(skips.pop(), x.shape[-2:]), x], dim=1))
        return self.classifier(x)

    # -- making any input size work ---------------------------------------------------
    @staticmethod
    def valid_input_size(size: int) -> int:
        """Smallest legal valid-mode tile (16k + 124, e.g. 572) whose output covers ``size``."""
        k = max(1, math.ceil((size + 2 * VALID_MARGIN - 124) / 16))
        return 16 * k + 124

    def forward_context_tile(self, x: torch.Tensor) -> torch.Tensor:
        """Training on overlap tiles cut *with* their context (§2, Fig. 2; §3: the 572 input tile
        for a 388 output tile). The data pipeline (``train_pipeline(context=92)``) crops the
        input tile from the image, mirroring only beyond the image border, and labels its
        92 px margin 255. Nothing is mirrored here: the net sees the real neighbourhood. The
        logits of the inner region come back in place, zero in the (ignored) margin, so the
        output keeps the input size; odd inner sizes are mirror-extended bottom/right to the
        next legal tile and cropped back, as in :meth:`forward`."""
        m = VALID_MARGIN
        h, w = x.shape[-2:]
        inner_h, inner_w = h - 2 * m, w - 2 * m
        if inner_h < 1 or inner_w < 1:
            raise SegbenchError(f"unet: a context tile must be larger than 2 x {m} px, got {h}x{w}")
        th, tw = self.valid_input_size(inner_h), self.valid_input_size(inner_w)
        logits = self.forward_tile(mirror_pad(x, 0, th - h, 0, tw - w))[..., :inner_h, :inner_w]
        return F.pad(logits, (m, m, m, m))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        if self.padding == "valid" and self.tile_context and self.training:
            return {"out": self.forward_context_tile(x)}
        if self.padding == "valid":
            th, tw = self.valid_input_size(h), self.valid_input_size(w)
            m = VALID_MARGIN
            x = mirror_pad(x, m, th - h - m, m, tw - w - m)
        else:
            mult = 2**DEPTH
            x = mirror_pad(x, 0, -h % mult, 0, -w % mult)
        return {"out": self.forward_tile(x)[..., :h, :w]}
