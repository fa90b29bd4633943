"""Pixel-wise cross-entropy with an ignore index, optional class weights and the aux term."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationLoss(nn.Module):
    """``CE(out) + aux_weight * CE(aux) + sum_s CE(msc[s])``.

    ``aux_weight`` is 0.4 in PSPNet (§3.3 / §5.1); ``class_weights`` carries SegNet's
    median-frequency balancing (§3.2; see ``segbench data stats``).
    """

    def __init__(self, ignore_index: int = 255, aux_weight: float = 0.4,
                 class_weights: Sequence[float] | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        weight = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device)
        logits = logits.float()
        if logits.dim() == 4 and logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous():
            # NHWC logits: the same mean over pixels as rows of an (N*H*W) x C matrix, a free
            # view; the 4-D form would log_softmax into (and backpropagate through) an NCHW copy.
            logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
            target = target.reshape(-1)
        return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index)

    def forward(self, outputs: dict, target: torch.Tensor) -> torch.Tensor:
        loss = self.ce(outputs["out"], target)
        if "aux" in outputs and self.aux_weight:
            loss = loss + self.aux_weight * self.ce(outputs["aux"], target)
        # DeepLab v2 MSC (deeplab-pytorch main.py): one more CE term per input scale, summed
        # with the max-fused one, so each scale's branch is supervised on its own.
        for logits in outputs.get("msc", ()):
            loss = loss + self.ce(logits, target)
        return loss
