"""ISBI 2012 EM segmentation challenge (neuronal membranes), the data of U-Net's §4.

``train-volume.tif`` / ``train-labels.tif``: multi-page 8-bit TIFF stacks of 30 slices
512x512; ``test-volume.tif``: 30 slices without public labels. Labels are white (255) for cell
interior and black (0) for membranes, so train id 0 = membrane, 1 = cell (the challenge's
submission convention: 0 = membrane, 1 = non-membrane). Grey values in between (from resized
or re-encoded copies) are thresholded at 128. There is no ignore value.

No official validation set exists: ``val_slices`` (default the last three, 27-29: a block at
the end of the serial-section stack, so no held-out slice lies between two training ones) are held
out of ``train``; ``trainval`` is all 30. Figures on them are "held-out training slices", never
"test" (docs/isbi.md). ``test`` reads ``test-volume.tif``
with all-ignore labels, for prediction. Grey images are repeated to 3 channels.

Also read: zhixuhao/unet's PNG copy (``train/image/<i>.png``, ``train/label/<i>.png``,
``test/<i>.png``, numbered from 0), when the TIFFs are absent.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile

from segbench.data.base import SegmentationDataset
from segbench.data.card import Archive, DatasetCard, DatasetDownload
from segbench.data.fixtures import make_isbi

CLASSES = ("membrane", "cell")
PALETTE = np.array([(0, 0, 0), (255, 255, 255)], dtype=np.uint8)
NUM_SLICES = 30


def read_stack(path: Path) -> np.ndarray:
    """All pages of a multi-page TIFF as N×H×W (a single page gives 1×H×W)."""
    try:
        stack = tifffile.imread(str(path))
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for damaged files
        raise SegmentationDataset.corrupt(path, f"{type(err).__name__}: {err}") from None
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise SegmentationDataset.corrupt(path, f"expected a stack of grey slices, got shape {stack.shape}")
    return stack


class ISBI2012(SegmentationDataset):
    """ISBI 2012 ``train`` / ``val`` (slices ``val_slices``) / ``trainval`` (30) / ``test`` (30, no labels)."""

    name = "isbi"
    class_names = CLASSES
    palette = PALETTE
    ignore_color = (255, 0, 0)
    splits = ("train", "val", "trainval", "test")
    optional_splits = ("test",)  # only needed for prediction
    raw_values = (0, 255)
    strict_values = False  # intermediate greys are thresholded; `data check` only warns
    layout = """\
  train-volume.tif   (30 grey slices 512x512, multi-page TIFF)
  train-labels.tif   (30 slices: 255 = cell, 0 = membrane)
  test-volume.tif    (30 slices, no labels; for prediction)
  or zhixuhao/unet's PNGs: train/image/<i>.png  train/label/<i>.png  test/<i>.png"""
    source = ("http://brainiac2.mit.edu/isbi_challenge/ (registration; download train-volume.tif, "
              "train-labels.tif, test-volume.tif into data.root)")
    card = DatasetCard(
        download=DatasetDownload(
            (Archive(
                file="unet-master.zip",
                url="https://github.com/zhixuhao/unet/archive/refs/heads/master.zip",
                checksum=None,
                source="zhixuhao/unet's data/membrane: the ISBI 2012 train slices and labels and the test "
                       "slices as numbered PNGs (read by segbench.data.isbi); GitHub archive, no checksum published",
                move=(("unet-master/data/membrane/train", "train"), ("unet-master/data/membrane/test", "test")),
                drop=("unet-master",),
            ),),
            notes=(("The original multi-page TIFFs (train-volume.tif, train-labels.tif, test-volume.tif) are "
                    "only on http://brainiac2.mit.edu/isbi_challenge/ after registration; put them into "
                    "data.root and they are read instead of the PNG copy."),)),
        fixture=make_isbi)

    def __init__(self, root, split, transform=None, val_slices: Sequence[int] = (27, 28, 29)):
        self.val_slices = sorted(int(i) for i in val_slices)
        self.slices: list[int | None] = []
        self._stacks: dict[Path, np.ndarray] = {}
        n_val = len(self.val_slices)
        self.expected_counts = {"train": NUM_SLICES - n_val, "val": n_val, "trainval": NUM_SLICES, "test": NUM_SLICES}
        super().__init__(root, split, transform)

    def raw_to_train(self):
        return {v: int(v >= 128) for v in range(256)}

    def encode_label(self, train_ids) -> np.ndarray:
        return np.where(np.asarray(train_ids) == 1, 255, 0).astype(np.uint8)

    def decode(self, raw):
        if raw.dtype == bool:
            return raw.astype(np.uint8)
        if raw.dtype != np.uint8:  # 16-bit or float stacks: threshold at half the range
            top = 1.0 if raw.dtype.kind == "f" else np.iinfo(raw.dtype).max
            return (raw >= top / 2).astype(np.uint8)
        return self.codec.decode(raw)

    # ---- listing ----------------------------------------------------------------------------
    def wanted(self, n: int) -> list[int]:
        if self.split == "val":
            return [i for i in self.val_slices if i < n]
        if self.split == "train":
            return [i for i in range(n) if i not in self.val_slices]
        return list(range(n))

    def split_source(self) -> Path:
        volume = self.root / ("test-volume.tif" if self.split == "test" else "train-volume.tif")
        if volume.is_file():
            return volume
        return self.root / "test" if self.split == "test" else self.root / "train" / "image"

    def list_samples(self):
        if not self.root.is_dir():
            raise self.missing(self.root, "dataset root does not exist")
        if self.split == "test":
            volume = self.root / "test-volume.tif"
            if volume.is_file():
                n = len(self.stack(volume))
                self.slices = list(range(n))
                return [(volume, None)] * n
            return self._list_pngs(self.root / "test", None)
        volume, labels = self.root / "train-volume.tif", self.root / "train-labels.tif"
        if not volume.is_file() and (self.root / "train" / "image").is_dir():
            return self._list_pngs(self.root / "train" / "image", self.root / "train" / "label")
        self.require(volume, "train-volume.tif missing")
        self.require(labels, "train-labels.tif missing")
        n = len(self.stack(volume))
        self.slices = self.wanted(n)
        return [(volume, labels)] * len(self.slices)

    def _list_pngs(self, image_dir: Path, label_dir: Path | None):
        self.require(image_dir, f"'{image_dir.relative_to(self.root)}' folder missing")
        numbered = {int(m.group(1)): p for p in image_dir.glob("*.png")
                    if (m := re.fullmatch(r"(\d+)", p.stem))}
        keep = self.wanted(max(numbered) + 1) if numbered else []
        self.slices = [None] * len([k for k in keep if k in numbered])
        return [(numbered[k], None if label_dir is None else label_dir / numbered[k].name)
                for k in keep if k in numbered]

    # ---- reading ----------------------------------------------------------------------------
    def stack(self, path: Path) -> np.ndarray:
        if path not in self._stacks:  # 30x512x512 bytes: read once per process
            self._stacks[path] = read_stack(path)
        return self._stacks[path]

    def _page(self, path: Path, index: int) -> np.ndarray:
        k = self.slices[index]
        if k is not None:
            stack = self.stack(path)
            if k >= len(stack):
                raise self.corrupt(path, f"has {len(stack)} slices, slice {k} requested")
            return stack[k]
        page = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if page is None:
            raise self.corrupt(path)
        return page if page.ndim == 2 else cv2.cvtColor(page, cv2.COLOR_BGR2GRAY)

    def read_image_at(self, index: int) -> np.ndarray:
        """Slice ``index`` as H×W×3 uint8 (grey repeated: models take RGB)."""
        image_path = self.require(self.samples[index][0], "image missing")
        page = self._page(image_path, index)
        if page.dtype != np.uint8:  # some copies are 16-bit or float; scale to 0..255
            page = cv2.normalize(page.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        return np.repeat(page[..., None], 3, axis=2)

    def load(self, index):
        image = self.read_image_at(index)
        label = self.load_label(index)
        if label is not None and label.shape != image.shape[:2]:
            raise self.corrupt(self.samples[index][1],
                               f"label slice is {label.shape[::-1]}, image slice is {image.shape[1::-1]}")
        return image, label

    def read_raw_label_at(self, index: int) -> np.ndarray:
        label_path = self.samples[index][1]
        self.require(label_path, f"label missing for {self.sample_id(index)}")
        return self._page(label_path, index)

    def load_label(self, index: int) -> np.ndarray | None:
        if self.samples[index][1] is None:
            return None
        return self.decode(self.read_raw_label_at(index))

    def sample_id(self, index: int) -> str:
        k = self.slices[index]
        path = self.samples[index][0]
        return f"{path.stem}_{k:02d}" if k is not None else path.stem
