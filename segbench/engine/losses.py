"""Pixel-wise cross-entropy with an ignore index, optional class weights and the aux term."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segbench.models.layout import is_channels_last


class SegmentationLoss(nn.Module):
    """``CE(out) + aux_weight * CE(aux) + sum_s CE(msc[s])``.

    ``aux_weight`` is 0.4 in PSPNet (§3.3 / §5.1); ``class_weights`` carries SegNet's
    median-frequency balancing (§3.2; see ``segbench data stats``). ``label_stride`` scores only
    every ``label_stride``-th pixel of each row and column: DeepLab v1/v2 train on the ground
    truth subsampled by 8 (v2 §4). Their logits are upsampled with ``align_corners=True``, so
    for crops of 8k + 1 pixels (321) the upsampled logits at those pixels *are* the stride-8
    network outputs, and the loss is the authors' loss on the stride-8 score map.
    """

    def __init__(self, ignore_index: int = 255, aux_weight: float = 0.4,
                 class_weights: Sequence[float] | None = None, weight_map: Mapping | None = None,
                 label_stride: int = 1):
        super().__init__()
        self.ignore_index = ignore_index
        self.label_stride = int(label_stride)
        # U-Net's per-pixel weights (eq. 2), e.g. {w0: 10, sigma: 5, class_balance: true}
        self.weight_map = None if weight_map is None else dict(weight_map)
        self.aux_weight = aux_weight
        weight = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def ce(self, logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device)
        logits = logits.float()
        if self.weight_map is not None:
            return self.weighted_ce(logits, target, pixel_weights, weight)
        if is_channels_last(logits):
            # NHWC logits: the same mean over pixels as rows of an (N*H*W) x C matrix, a free
            # view; the 4-D form would log_softmax into (and backpropagate through) an NCHW copy.
            logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
            target = target.reshape(-1)
        return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index)

    def weighted_ce(self, logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
        """U-Net §3: the energy sums w(x) log p(x) over pixels; averaged over labelled pixels here.

        ``pixel_weights`` are the maps w(x) (:func:`segbench.data.weight_map.unet_weight_map`),
        made by the DataLoader workers with the batch: the scipy labelling and distance
        transforms cost seconds a batch, which the main process would add to every step.
        ``class_weights`` (``weight``), when given, multiply in as well: pixel x weighs
        ``class_weights[label(x)] * w(x)``, as ``F.cross_entropy``'s ``weight`` scales each pixel.
        """
        if pixel_weights is None:
            raise ValueError("loss.weight_map is set but no per-pixel weights came with the batch: the data "
                             "loader makes them (batch['weight']); pass them as weights=")
        per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index,
                                    reduction="none")
        labelled = (target != self.ignore_index).sum().clamp(min=1)
        return (per_pixel * pixel_weights.to(per_pixel.device, per_pixel.dtype)).sum() / labelled

    def forward(self, outputs: dict, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: the batch's per-pixel weight maps (N x H x W), with ``weight_map`` only."""
        target = target.long()
        if self.label_stride > 1:
            s = self.label_stride
            outputs = {k: [m[..., ::s, ::s] for m in v] if k == "msc" else v[..., ::s, ::s]
                       for k, v in outputs.items()}
            target = target[..., ::s, ::s]
            weights = None if weights is None else weights[..., ::s, ::s]
        loss = self.ce(outputs["out"], target, weights)
        if "aux" in outputs and self.aux_weight:
            loss = loss + self.aux_weight * self.ce(outputs["aux"], target, weights)
        # DeepLab v2 MSC (deeplab-pytorch main.py): one more CE term per input scale, summed
        # with the max-fused one, so each scale's branch is supervised on its own.
        for logits in outputs.get("msc", ()):
            loss = loss + self.ce(logits, target, weights)
        return loss
