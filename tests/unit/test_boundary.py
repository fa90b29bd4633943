"""Boundary F1 (Csurka et al. 2013, SegNet's BF) against hand-computed cases."""
import math

import numpy as np
import pytest
import torch

from segbench.metrics.boundary import BoundaryF1, boundary, class_f1, image_bf, tolerance_pixels


def halves(split_top: int, split_bottom: int, size: int = 8) -> np.ndarray:
    """class 0 left of column ``split`` (rows 0-3 use split_top, rows 4-7 split_bottom), class 1 right."""
    label = np.ones((size, size), np.int64)
    label[: size // 2, :split_top] = 0
    label[size // 2:, :split_bottom] = 0
    return label


def test_boundary_is_the_inner_perimeter_without_the_image_frame():
    mask = halves(4, 4) == 0  # columns 0..3
    expected = np.zeros_like(mask)
    expected[:, 3] = True
    assert np.array_equal(boundary(mask), expected)
    assert not boundary(np.ones((5, 5), bool)).any()  # a class filling the image has no contour


def test_hand_computed_half_shifted_boundary():
    """GT: the 0|1 border at column 3|4 on every row. Prediction: the top four rows have it one
    pixel to the right (column 4|5).

    Class 0: GT boundary = column 3 (8 px); predicted boundary = (r, 4) for r < 4 and (r, 3) for
    r >= 4 (8 px). With a tolerance below 1 px only the 4 bottom pixels coincide:
    P = 4/8, R = 4/8, F1 = 0.5. Class 1 is the mirror case (GT column 4, predicted (r, 5) top /
    (r, 4) bottom): F1 = 0.5. BF = mean over the classes in the GT = 0.5. With a 1 px tolerance
    every boundary pixel has a partner at distance <= 1: BF = 1.
    """
    gt, pred = halves(4, 4), halves(5, 4)
    assert class_f1(gt == 0, pred == 0, theta=0.5) == pytest.approx(0.5)
    assert class_f1(gt == 1, pred == 1, theta=0.5) == pytest.approx(0.5)
    assert image_bf(pred, gt, tolerance_px=0.5) == pytest.approx(0.5)
    assert image_bf(pred, gt, tolerance_px=1.0) == pytest.approx(1.0)
    # SegNet's tolerance, 0.75 % of the diagonal, is 0.085 px here: only exact matches count.
    assert tolerance_pixels((8, 8)) == pytest.approx(0.0075 * math.hypot(8, 8))
    assert image_bf(pred, gt) == pytest.approx(0.5)
    assert image_bf(gt, gt) == 1.0


def test_unequal_precision_and_recall():
    """GT: one 4x4 square of class 1 (12 boundary px) in a 10x10 background. Prediction: the
    same square plus a separate 2x2 blob (4 more boundary px, all false).
    Class 1: P = 12/16, R = 1, F1 = 2 * 0.75 / 1.75 = 6/7.
    Background: its inner perimeter in the GT is the 16 px 4-adjacent to the square; the
    prediction adds the 8 px 4-adjacent to the blob: P = 16/24, R = 1."""
    gt = np.zeros((10, 10), np.int64)
    gt[2:6, 2:6] = 1
    pred = gt.copy()
    pred[7:9, 7:9] = 1
    assert class_f1(gt == 1, pred == 1, theta=0.5) == pytest.approx(6 / 7)
    ring_gt = int(boundary(gt == 0).sum())
    ring_pred = int(boundary(pred == 0).sum())
    assert ring_gt == 16 and ring_pred == 16 + 8  # 4-connected ring: 4 per side of each square
    precision, recall = 16 / 24, 1.0
    f1_background = 2 * precision * recall / (precision + recall)
    assert image_bf(pred, gt, tolerance_px=0.5) == pytest.approx((f1_background + 6 / 7) / 2)


def test_missing_class_ignore_and_empty_images():
    gt = halves(4, 4)
    all_zero = np.zeros_like(gt)
    # class 1 never predicted -> F1 0; class 0 fills the image in the prediction -> no contour -> 0
    assert image_bf(all_zero, gt, tolerance_px=2) == 0.0
    # ignore pixels are removed from both: a prediction differing only under ignore scores 1
    gt_ignore = gt.copy()
    gt_ignore[:, 6:] = 255
    pred = gt.copy()
    pred[:, 6:] = 0
    assert image_bf(pred, gt_ignore, tolerance_px=0.5) == 1.0
    assert image_bf(pred, np.full_like(gt, 255)) is None


def test_accumulator_averages_images_and_accepts_tensors():
    gt, pred = halves(4, 4), halves(5, 4)
    bf = BoundaryF1(tolerance=0.0075)
    bf.update(torch.from_numpy(np.stack([pred, gt])), torch.from_numpy(np.stack([gt, gt])))
    bf.update(pred, np.full_like(gt, 255))  # no labelled pixel: not counted
    assert bf.count == 2
    assert bf.compute() == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(BoundaryF1().compute())
