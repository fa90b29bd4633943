"""U-Net's per-pixel loss weights, made in the DataLoader workers with each training batch.

The scipy labelling and one distance transform per cell cost ~1-3 s for a batch of ISBI tiles
(far more on noise labels): in the main process that time would add to every ~30 ms GPU step.
The train loader's :class:`~segbench.engine.sampler.SeededView` calls :class:`WeightMaps` on
each augmented label, so the map always matches the tile the loss sees.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


class WeightMaps:
    """``loss.weight_map`` (``w0``, ``sigma``, ``class_balance``, ``foreground``) as a callable
    uint8 label tensor -> float32 weight tensor of the same H x W."""

    def __init__(self, num_classes: int, ignore_index: int = 255, **options):
        self.num_classes, self.ignore_index, self.options = int(num_classes), int(ignore_index), dict(options)

    def __call__(self, label: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(unet_weight_map(label.numpy(), num_classes=self.num_classes,
                                                ignore_index=self.ignore_index, **self.options))


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
