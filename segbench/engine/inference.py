"""Inference protocols: whole image, multi-scale, horizontal flip.

Logits are always brought back to the input (= label) resolution before scoring: labels are
never downsampled (DeepLab v3 §4.1). Over scales and flips the logits are averaged, as
DeepLab v3 §4.3 averages the outputs of its multi-scale inputs (mmseg and semseg do the same).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def forward_logits(model, images: torch.Tensor) -> torch.Tensor:
    return model(images)["out"]


def predict(model, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Average logits over ``scales`` (× horizontal flip); returns N×C×H×W at input size."""
    height, width = images.shape[-2:]
    total = None
    for scale in scales:
        if scale == 1.0:
            scaled = images
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        for i, view in enumerate(views):
            logits = forward_logits(model, view).float()
            if i == 1:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
    return total / (len(scales) * (2 if flip else 1))
