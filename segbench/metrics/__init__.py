"""Confusion-matrix metrics, accumulated over a whole split (never a mean of per-batch scores).

Definitions follow the standard evaluators (PASCAL VOC devkit, Cityscapes scripts, mmseg):
with C the confusion matrix (rows = ground truth, columns = prediction),

    IoU_c  = C[c,c] / (sum_row_c + sum_col_c - C[c,c])
    Acc_c  = C[c,c] / sum_row_c
    aAcc   = trace(C) / sum(C)
    mIoU   = nanmean(IoU_c),  mAcc = nanmean(Acc_c)
    fwIoU  = sum_c freq_c * IoU_c  over classes present in the ground truth

A class absent from both prediction and ground truth has IoU = NaN (0/0) and is excluded
from the means, as the standard evaluators do; a class predicted but absent from the ground
truth scores IoU = 0.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """``num_classes``×``num_classes`` counts, kept on the device of the predictions."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``pred`` holds class ids (any shape) or logits N×C×H×W; ``target`` ids."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        keep = target != self.ignore_index
        target = target[keep].long()
        pred = pred[keep].long().to(target.device)
        if target.numel() and int(target.max()) >= self.num_classes:
            raise ValueError(f"label value {int(target.max())} >= num_classes {self.num_classes} "
                             f"(and not the ignore index {self.ignore_index})")
        index = target * self.num_classes + pred
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def reduce(self) -> None:
        """Sum the matrices of all processes (call on every rank under torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> dict:
        """aAcc, mAcc, mIoU, fwIoU (fractions in 0..1) and per-class IoU / Acc lists (NaN = absent)."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        gt = m.sum(1)
        predicted = m.sum(0)
        union = gt + predicted - tp
        iou = tp / union  # 0/0 -> nan: class absent from GT and prediction
        acc = tp / gt
        total = m.sum()
        freq = gt / total if total > 0 else gt
        present = gt > 0
        return {
            "aAcc": float(tp.sum() / total) if total > 0 else math.nan,
            "mAcc": _nanmean(acc),
            "mIoU": _nanmean(iou),
            "fwIoU": float((freq[present] * iou[present]).sum()) if present.any() else math.nan,
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
        }


def _nanmean(values: torch.Tensor) -> float:
    valid = ~torch.isnan(values)
    return float(values[valid].mean()) if valid.any() else math.nan
