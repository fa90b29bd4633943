"""The label codec: a dataset's on-disk label values ↔ train ids, through 256-entry tables.

Train ids are ``0..C-1`` with 255 = ignore. A dataset describes its encoding once (which
on-disk value becomes which train id, and which values a valid label file may hold) and gets a
:class:`LabelCodec`; decoding is one table lookup per pixel (``lut[label]``), never a loop.
The codec knows nothing of files or datasets: :class:`segbench.data.base.SegmentationDataset`
builds one from its class attributes and reads its label files through it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

IGNORE = 255


class LabelCodec:
    """``raw_to_train``: on-disk value → train id (anything not in it decodes to 255);
    ``allowed_raw``: every value a valid label file may hold (the rest is reported)."""

    def __init__(self, raw_to_train: Mapping[int, int], allowed_raw: Iterable[int]):
        self.raw_to_train = dict(raw_to_train)
        self.lut = np.full(256, IGNORE, dtype=np.uint8)
        for raw, train in self.raw_to_train.items():
            self.lut[raw] = train
        self.allowed_raw = np.asarray(sorted(allowed_raw))
        # True for the 8-bit values a valid label file never holds: one lookup per pixel.
        self.outside_raw = ~np.isin(np.arange(256), self.allowed_raw)
        self.inverse_lut = self._inverse()

    def _inverse(self) -> np.ndarray:
        """train id → on-disk value (the first on-disk value that decodes to it, like
        cityscapesScripts' inverse mapping). Train id 255 maps to the first ignored value."""
        inv = np.zeros(256, dtype=np.uint8)
        ignored = [int(v) for v in self.allowed_raw if self.lut[v] == IGNORE]
        inv[:] = ignored[0] if ignored else IGNORE
        for raw, train in sorted(self.raw_to_train.items(), reverse=True):
            if train != IGNORE:
                inv[train] = raw
        return inv

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """On-disk label array → H×W uint8 train ids (values not in the table → 255)."""
        if raw.dtype == np.uint8:
            return self.lut[raw]
        out = self.lut[np.clip(raw, 0, 255).astype(np.uint8)]  # 16-bit or int PNGs
        out[(raw < 0) | (raw > 255)] = IGNORE
        return out

    def encode(self, train_ids) -> np.ndarray:
        """Train ids → the on-disk encoding (exact inverse of :meth:`decode` on valid ids)."""
        return self.inverse_lut[np.asarray(train_ids).astype(np.uint8)]

    def unexpected_values(self, raw: np.ndarray) -> list[int]:
        """On-disk values present in ``raw`` that a valid label file never holds."""
        present = np.unique(raw)
        return [int(v) for v in present[~np.isin(present, self.allowed_raw)]]
