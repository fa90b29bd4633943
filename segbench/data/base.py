"""The shared shape of every dataset: a list of (image, label) files, decoded to train ids.

A subclass says where its files are (:meth:`list_samples`), how a label file becomes train
ids ``0..C-1`` / ``255`` (:meth:`read_label`), its class names and palette, and what its tree
looks like and where it comes from (used in every "missing data" message). Everything else —
reading images, checking sizes, applying the albumentations pipeline, turning arrays into
tensors — lives here once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segbench.errors import CorruptFileError, DatasetNotFoundError, SegbenchError

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Decoding happens in worker processes; OpenCV's own thread pool there only fights the
# main process for the two cores.
cv2.setNumThreads(0)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC bit-interleaved colour map (VOCdevkit ``VOClabelcolormap.m``), n×3 uint8."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


_REPORTED_LABELS: set[str] = set()  # label files already reported by this process


def report_unexpected_labels(dataset: str, path: Path, values, pixels: int) -> None:
    """Say once per label file (per process: the main one or a DataLoader worker) that it holds
    values outside the dataset's encoding, which train as ignore (255) instead of as a class."""
    if str(path) in _REPORTED_LABELS:
        return
    _REPORTED_LABELS.add(str(path))
    import sys

    print(f"segbench: warning: {dataset}: {path} holds label values {sorted(values)} outside the "
          f"dataset's encoding ({pixels} pixels); they are ignored (255). `segbench data check` lists "
          f"every such file", file=sys.stderr, flush=True)


class SegmentationDataset(Dataset):
    """Base class: subclasses fill the class attributes and the two ``list``/``read`` hooks."""

    name: ClassVar[str] = "dataset"
    class_names: ClassVar[Sequence[str]] = ()
    palette: ClassVar[np.ndarray] = voc_colormap()  # row i = colour of train id i
    ignore_color: ClassVar[tuple[int, int, int]] = (224, 224, 192)
    splits: ClassVar[Sequence[str]] = ("train", "val")
    expected_counts: ClassVar[dict[str, int]] = {}
    layout: ClassVar[str] = ""  # the expected tree, shown when something is missing
    source: ClassVar[str] = ""  # where the user downloads it

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None):
        self.root = Path(root).expanduser()
        if split not in self.splits:
            raise SegbenchError(
                f"{self.name}: unknown split '{split}'; available: {', '.join(self.splits)}"
            )
        self.split = split
        self.transform = transform
        self.samples: list[tuple[Path, Path | None]] = self.list_samples()
        if not self.samples:  # name the list file that came out empty, where the layout has one
            listed = getattr(self, "split_file", None)
            try:
                where = listed() if callable(listed) else self.root
            except SegbenchError:
                where = self.root
            raise self.missing(where, f"no samples found for split '{split}'")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---- hooks for subclasses -------------------------------------------------------------
    def list_samples(self) -> list[tuple[Path, Path | None]]:
        """Image and label paths of ``self.split``, in a deterministic order."""
        raise NotImplementedError

    def read_label(self, path: Path) -> np.ndarray:
        """Decode one label file into an H×W uint8 array of train ids (255 = ignore)."""
        raise NotImplementedError

    def read_image(self, path: Path) -> np.ndarray:
        """Decode one image into H×W×3 uint8 RGB."""
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise self.corrupt(path)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    # ---- shared helpers ---------------------------------------------------------------------
    def missing(self, path: Path, what: str = "not found") -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self.name}: {what}: {path}\n"
            f"Expected layout under data.root={self.root}:\n{self.layout.rstrip()}\n"
            f"Get the data from: {self.source}\n"
            f"Point segbench at it with data.root=<dir> or the SEGBENCH_DATA environment variable."
        )

    @staticmethod
    def corrupt(path: Path, why: str = "cannot be decoded") -> CorruptFileError:
        return CorruptFileError(f"corrupt or unreadable file: {path} ({why})")

    def require(self, path: Path, what: str = "missing") -> Path:
        if not path.exists():
            raise self.missing(path, what)
        return path

    def read_palette_png(self, path: Path) -> np.ndarray:
        """Read the raw indices of an 8-bit PNG (palette or grey), never converting to RGB."""
        try:
            with Image.open(path) as img:
                return np.array(img)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for truncated files
            raise self.corrupt(path, str(err)) from None

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The decoded image and train-id label of sample ``index`` (no transform)."""
        image_path, label_path = self.samples[index]
        image = self.read_image(image_path)
        label = None if label_path is None else self.read_label(label_path)
        if label is not None and label.shape[:2] != image.shape[:2]:
            raise CorruptFileError(
                f"image/label size mismatch: {image_path} is {image.shape[1]}x{image.shape[0]}, "
                f"{label_path} is {label.shape[1]}x{label.shape[0]}"
            )
        return image, label

    def sample_id(self, index: int) -> str:
        return self.samples[index][0].stem

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        image, label = self.load(index)
        if label is None:  # test splits: an all-ignore label keeps batches uniform
            label = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        image = np.ascontiguousarray(image.transpose(2, 0, 1))
        return {
            "image": torch.from_numpy(image).float(),
            "label": torch.from_numpy(np.ascontiguousarray(label)).long(),
            "id": self.sample_id(index),
        }

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """Train ids → H×W×3 RGB with the dataset's palette (ignore shown in ``ignore_color``)."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: len(self.class_names)] = self.palette[: len(self.class_names)]
        lut[IGNORE_INDEX] = self.ignore_color
        return lut[label]
