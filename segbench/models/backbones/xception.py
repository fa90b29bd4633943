"""Modified Aligned Xception-65, the DeepLab v3+ backbone (v3+ §3.2, Fig. 4).

Why timm: ``timm.models.xception65`` is a from-scratch port of the authors' TensorFlow network
(tensorflow/models ``research/deeplab/core/xception.py``) whose ``xception65.tf_in1k`` weights
*are* the ImageNet checkpoint DeepLab released, loaded through timm's own ``pretrained=`` API.
Checked against the TF source, it is the paper's modified aligned Xception:

* stem 3x3/32 stride 2 + 3x3/64, then entry flow (3 blocks, 128/256/728), middle flow
  (16 blocks of 728) and exit flow (728-1024-1024 strided, then 1536-1536-2048): 65 layers;
* every max-pool replaced by a strided separable conv (the third conv of a block);
* BN after each depthwise conv; ReLU before each separable conv, and inside it (after both the
  depthwise and the pointwise BN) in the last block (TF ``activation_fn_in_separable_conv``).
  The paper says "extra BN and ReLU after each depthwise conv"; the released TF code (and
  timm) adds the BN everywhere and the ReLU only in the last block -- we follow the code,
  which produced the checkpoints;
* symmetric padding 1 for the stride-2 3x3 convs, equal to TF's ``fixed_padding``.

What we add on top of timm (instead of ``features_only=True`` / ``output_stride=``):

* the stride-4 low-level feature DeepLab's decoder reads is
  ``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise`` -- the output of the
  second separable conv of entry block 2 *before* the ReLU that starts the third one. timm's
  feature tap for that stride is taken after that (in-place) ReLU, so we tap it ourselves;
* :meth:`XceptionBackbone.set_output_stride` re-dilates in place (train at OS 16, evaluate at
  OS 8 with the same weights) following TF ``stack_blocks_dense``: the block that would exceed
  the output stride keeps its rate and loses its stride, later blocks double their rate;
* optional Multi-Grid unit rates for the three separable convs of the last block (TF
  ``multi_grid``; DeepLab's Xception models use none, i.e. (1, 1, 1)).

TF's Xception expects inputs scaled to [-1, 1] (mean = std = 0.5 per channel), not the
ImageNet mean/std of the ResNets: the data pipeline should normalise accordingly when
``pretrained=True``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench.errors import SegbenchError
from segbench.models.backbones.base import Backbone, FeatureInfo
from segbench.models.backbones.resnet import check_name
from segbench.models.backbones.weights import timm_model

XCEPTIONS = ("xception65",)
OUT_CHANNELS = {"low": 256, "out": 2048}
OUTPUT_STRIDES = (8, 16, 32)
#: The authors' ImageNet checkpoint ported from TF (``ra3_in1k`` is timm's own retraining).
TIMM_TAG = "tf_in1k"
#: Entry-flow block 2 (index 1) holds the stride-4 decoder tap in its ``stack.conv2``.
LOW_LEVEL_BLOCK = 1
STEM_STRIDE = 2


class XceptionBackbone(Backbone):
    """Aligned Xception-65 trunk returning ``{"low": stride-4 256 ch, "out": 2048 ch}``.

    Args:
        name: ``xception65``.
        output_stride: 8, 16 or 32.
        multi_grid: unit rates of the last block's three separable convs.
        pretrained: load the TF DeepLab ImageNet checkpoint (timm ``xception65.tf_in1k``).
    """

    def __init__(
        self,
        name: str = "xception65",
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 1, 1),
        pretrained: bool = False,
    ):
        super().__init__()
        check_name(name, XCEPTIONS)
        net = timm_model(name, TIMM_TAG, pretrained)  # built at OS 32: nominal strides
        self.stem, self.blocks = net.stem, net.blocks  # the classifier head is dropped
        # The tap must survive the in-place ReLU that follows it.
        self.blocks[LOW_LEVEL_BLOCK].stack.act3 = nn.ReLU(inplace=False)
        self.nominal_strides = [block.stack.conv3.conv_dw.stride[0] for block in self.blocks]
        if len(multi_grid) != 3:
            raise SegbenchError(f"multi_grid needs three unit rates, got {list(multi_grid)}")
        self.multi_grid = tuple(int(r) for r in multi_grid)
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Re-dilate in place, as TF ``stack_blocks_dense`` builds it (v3+ §3.1)."""
        if output_stride not in OUTPUT_STRIDES:
            raise SegbenchError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        stride, rate = STEM_STRIDE, 1
        last = len(self.blocks) - 1
        for i, (block, nominal) in enumerate(zip(self.blocks, self.nominal_strides)):
            if stride == output_stride:  # atrous from here on: keep the rate, drop the stride
                block_stride, block_rate, rate = 1, rate, rate * nominal
            else:
                block_stride, block_rate, stride = nominal, 1, stride * nominal
            unit_rates = self.multi_grid if i == last else (1, 1, 1)
            _configure_block(block, block_stride, [block_rate * r for r in unit_rates])
        self.output_stride = output_stride

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        # the tap (entry block 2's second conv) comes before that block's strided third conv:
        # stride 2 (stem) x 2 (entry block 1)
        return (FeatureInfo("low", OUT_CHANNELS["low"], 4),
                FeatureInfo("out", OUT_CHANNELS["out"], self.output_stride))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # the stem as one checkpointed unit, then block by block (Backbone.run)
        x = self.run(self.stem, x)
        low = None
        for i, block in enumerate(self.blocks):
            if i == LOW_LEVEL_BLOCK:
                x, low = self.run(_forward_with_tap, block, x, modules=(block,))
            else:
                x = self.run(block, x)
        return {"low": low, "out": x}


def _forward_with_tap(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An Xception module's forward that also returns its ``conv2`` output (pre-ReLU)."""
    y = x
    for name, layer in block.stack.named_children():
        y = layer(y)
        if name == "conv2":
            tap = y
    shortcut = block.shortcut(x) if block.shortcut is not None else x
    return y + shortcut, tap


def _configure_block(block: nn.Module, stride: int, rates: Sequence[int]) -> None:
    """Stride of the third (subsampling) separable conv and of the 1x1 shortcut; rate of each
    depthwise conv (padding = rate keeps a 3x3 "same"-sized; stride-2 blocks have rate 1)."""
    for i, rate in enumerate(rates):
        conv = getattr(block.stack, f"conv{i + 1}").conv_dw
        conv.dilation = (rate, rate)
        conv.padding = (rate, rate)
    block.stack.conv3.conv_dw.stride = (stride, stride)
    if block.shortcut is not None:
        block.shortcut.conv.stride = (stride, stride)
