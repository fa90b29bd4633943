"""Boundary F1 score (BF) of Csurka, Larlus and Perronnin (BMVC 2013), as SegNet reports it.

SegNet (Badrinarayanan et al., TPAMI 2017, §4): "we compute the F1-measure which involves
computing the precision and recall between the predicted and ground truth class boundary
given a pixel tolerance distance. We used a value of 0.75% of the image diagonal as the
tolerance distance. The F1-measure for each class that is present in the ground truth test
image is averaged to produce an image F1-measure. Then we compute the whole test set average."

For one image and one class c, with B_gt / B_pr the boundary pixels of the ground-truth and
predicted masks of c and theta the tolerance in pixels:

    precision = |{p in B_pr : dist(p, B_gt) <= theta}| / |B_pr|
    recall    = |{p in B_gt : dist(p, B_pr) <= theta}| / |B_gt|
    F1        = 2 P R / (P + R)        (0 when P + R = 0)

Conventions (those of MATLAB's ``bfscore``, which implements Csurka et al.):

* a mask's boundary is its 4-connected inner perimeter: mask pixels with a 4-neighbour
  outside the mask. The image frame is *not* a boundary (a region touching the border has
  no contour there);
* distances are Euclidean (``scipy.ndimage.distance_transform_edt``);
* both boundaries empty -> F1 = 1; exactly one empty -> F1 = 0;
* ignore pixels (255) are removed from the prediction too, so that the void band around VOC
  objects neither creates nor hides predicted contours; an image without any labelled class
  does not count.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from scipy import ndimage

#: SegNet §4: 0.75 % of the image diagonal.
SEGNET_TOLERANCE = 0.0075
_CROSS = ndimage.generate_binary_structure(2, 1)


def tolerance_pixels(shape: tuple[int, int], fraction: float = SEGNET_TOLERANCE) -> float:
    """The tolerance distance in pixels for an H x W image: ``fraction`` of its diagonal."""
    return fraction * math.hypot(shape[0], shape[1])


def boundary(mask: np.ndarray) -> np.ndarray:
    """Inner 4-connected perimeter of a boolean mask (the image frame is not a boundary)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    interior = ndimage.binary_erosion(mask, structure=_CROSS, border_value=1)
    return mask & ~interior


def _matched(points: np.ndarray, other: np.ndarray, theta: float) -> int:
    """How many ``points`` pixels lie within ``theta`` of some ``other`` pixel."""
    if not points.any() or not other.any():
        return 0
    distance = ndimage.distance_transform_edt(~other)
    return int((distance[points] <= theta).sum())


def class_f1(gt_mask: np.ndarray, pred_mask: np.ndarray, theta: float) -> float:
    """Boundary F1 of one class in one image (see the module docstring)."""
    b_gt, b_pr = boundary(gt_mask), boundary(pred_mask)
    n_gt, n_pr = int(b_gt.sum()), int(b_pr.sum())
    if n_gt == 0 and n_pr == 0:
        return 1.0
    if n_gt == 0 or n_pr == 0:
        return 0.0
    precision = _matched(b_pr, b_gt, theta) / n_pr
    recall = _matched(b_gt, b_pr, theta) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def image_bf(pred: np.ndarray, gt: np.ndarray, tolerance: float = SEGNET_TOLERANCE,
             ignore_index: int = 255, tolerance_px: float | None = None) -> float | None:
    """Mean boundary F1 over the classes present in ``gt`` (H x W train ids); ``None`` when
    ``gt`` holds no labelled pixel. ``tolerance`` is a fraction of the diagonal, or give the
    distance directly as ``tolerance_px``."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != label shape {gt.shape}")
    valid = gt != ignore_index
    classes = np.unique(gt[valid])
    if classes.size == 0:
        return None
    theta = tolerance_pixels(gt.shape, tolerance) if tolerance_px is None else tolerance_px
    pred = np.where(valid, pred, -1)
    return float(np.mean([class_f1(gt == c, pred == c, theta) for c in classes]))


class BoundaryF1:
    """Accumulates per-image BF over a split: ``update(pred, target)`` with N x H x W (or
    H x W) arrays/tensors of train ids; ``compute()`` = mean image BF (fraction in 0..1)."""

    def __init__(self, tolerance: float = SEGNET_TOLERANCE, ignore_index: int = 255):
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.total = 0.0
        self.count = 0

    def update(self, pred, target) -> None:
        pred, target = to_numpy(pred), to_numpy(target)
        if target.ndim == 2:
            pred, target = pred[None], target[None]
        for p, t in zip(pred, target):
            score = image_bf(p, t, self.tolerance, self.ignore_index)
            if score is not None:
                self.total += score
                self.count += 1

    def reduce(self) -> None:
        """Sum over processes under torch.distributed (call on every rank)."""
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([self.total, float(self.count)], dtype=torch.float64)
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.all_reduce(t)
            self.total, self.count = float(t[0]), int(t[1])

    def compute(self) -> float:
        return self.total / self.count if self.count else math.nan


def to_numpy(x) -> np.ndarray:
    """A tensor (any device; bf16/fp16 scores as float32, which numpy can hold) or array as numpy."""
    if hasattr(x, "detach"):
        x = x.detach()
        x = (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.asarray(x)
