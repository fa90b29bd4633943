"""Pixel-wise cross-entropy with an ignore index, optional class weights and the aux term."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
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

    def ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device)
        logits = logits.float()
        if self.weight_map is not None:
            return self.weighted_ce(logits, target, weight)
        if is_channels_last(logits):
            # NHWC logits: the same mean over pixels as rows of an (N*H*W) x C matrix, a free
            # view; the 4-D form would log_softmax into (and backpropagate through) an NCHW copy.
            logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
            target = target.reshape(-1)
        return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index)

    def weighted_ce(self, logits: torch.Tensor, target: torch.Tensor,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
        """U-Net §3: the energy sums w(x) log p(x) over pixels; averaged over labelled pixels here.

        ``class_weights`` (``weight``), when given, multiply in as well: pixel x weighs
        ``class_weights[label(x)] * w(x)``, as ``F.cross_entropy``'s ``weight`` scales each pixel.
        """
        maps = np.stack([unet_weight_map(t, num_classes=logits.shape[1], ignore_index=self.ignore_index,
                                         **self.weight_map) for t in target.cpu().numpy()])
        per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index,
                                    reduction="none")
        labelled = (target != self.ignore_index).sum().clamp(min=1)
        return (per_pixel * torch.from_numpy(maps).to(per_pixel.device)).sum() / labelled

    def forward(self, outputs: dict, target: torch.Tensor) -> torch.Tensor:
        if self.label_stride > 1:
            s = self.label_stride
            outputs = {k: [m[..., ::s, ::s] for m in v] if k == "msc" else v[..., ::s, ::s]
                       for k, v in outputs.items()}
            target = target[..., ::s, ::s]
        loss = self.ce(outputs["out"], target)
        if "aux" in outputs and self.aux_weight:
            loss = loss + self.aux_weight * self.ce(outputs["aux"], target)
        # DeepLab v2 MSC (deeplab-pytorch main.py): one more CE term per input scale, summed
        # with the max-fused one, so each scale's branch is supervised on its own.
        for logits in outputs.get("msc", ()):
            loss = loss + self.ce(logits, target)
        return loss


def unet_weight_map(label: np.ndarray, num_classes: int, w0: float = 10.0, sigma: float = 5.0,
                    class_balance: bool = True, foreground: int = 1, ignore_index: int = 255) -> np.ndarray:
    """U-Net's weight map (Ronneberger et al. 2015, §3, eq. 2) for one H x W label:

        w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

    ``d1`` / ``d2``: distance to the nearest / second nearest cell (connected component of the
    ``foreground`` class), so the narrow background gaps between touching cells weigh most
    (w0 = 10, sigma ~ 5 px in the paper). As in common re-implementations the border term is
    applied to background pixels only (inside a cell d1 = 0; the paper means the separating
    borders). ``w_c`` balances the class frequencies of this label (its form is unstated in the
    paper): the most frequent class weighs 1, class c weighs count_max / count_c. Ignored
    pixels weigh 0. The paper pre-computes the map on the whole ground truth; here it is
    computed on the (augmented) training tile, so cells beyond the tile are not seen.
    """
    from scipy import ndimage

    label = np.asarray(label)
    valid = label != ignore_index
    weights = np.ones(label.shape, dtype=np.float32)
    if class_balance:
        counts = np.bincount(label[valid].astype(np.int64), minlength=num_classes)[:num_classes].astype(np.float64)
        w_c = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 1.0)
        weights = w_c[np.where(valid, label, 0)].astype(np.float32)
    cells, n = ndimage.label(label == foreground)
    if n >= 2:
        d1 = np.full(label.shape, np.inf)
        d2 = np.full(label.shape, np.inf)
        for k in range(1, n + 1):  # keep the two smallest distances, one cell at a time
            d = ndimage.distance_transform_edt(cells != k)
            d2 = np.minimum(d2, np.maximum(d1, d))
            d1 = np.minimum(d1, d)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))
        weights += np.where(valid & (label != foreground), border, 0.0).astype(np.float32)
    weights[~valid] = 0.0
    return weights
