import math

import numpy as np
import torch

from segbench.metrics import ConfusionMatrix


def brute_force(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = 255):
    keep = target != ignore
    pred, target = pred[keep], target[keep]
    ious, accs, freqs = [], [], []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        accs.append(tp / (tp + fn) if tp + fn else math.nan)
        freqs.append(np.sum(target == c) / target.size)
    fw = sum(f * i for f, i in zip(freqs, ious) if f > 0)
    return {"IoU": ious, "Acc": accs, "mIoU": np.nanmean(ious), "mAcc": np.nanmean(accs),
            "aAcc": np.mean(pred == target), "fwIoU": fw}


def test_confusion_matrix_matches_brute_force_with_ignore_pixels():
    rng = np.random.default_rng(0)
    num_classes = 7
    cm = ConfusionMatrix(num_classes)
    preds, targets = [], []
    for _ in range(5):  # accumulated over batches, scored once
        target = rng.integers(0, num_classes - 1, size=(2, 17, 23))  # class 6 never in GT
        target[rng.random(target.shape) < 0.2] = 255
        pred = rng.integers(0, num_classes - 2, size=target.shape)  # class 5, 6 never predicted
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
        preds.append(pred), targets.append(target)
    expected = brute_force(np.concatenate(preds), np.concatenate(targets), num_classes)
    got = cm.compute()
    for key in ("mIoU", "mAcc", "aAcc", "fwIoU"):
        assert math.isclose(got[key], expected[key], rel_tol=1e-9), key
    np.testing.assert_allclose(got["IoU"], expected["IoU"], rtol=1e-9)
    assert math.isnan(got["IoU"][6]), "a class absent from prediction and GT must be NaN, not 0"
    assert got["IoU"][5] == 0.0, "a class in GT but never predicted scores 0"


def test_update_accepts_logits_and_merge_adds():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.matrix, b.matrix)
    assert int(a.merge(b).matrix.sum()) == 2 * target.numel()


def test_label_out_of_range_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(3).update(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 7]))

