"""The shared shape of every dataset: a list of (image, label) files, decoded to train ids.

A subclass says where its files are (:meth:`~SegmentationDataset.list_samples`, and
:meth:`~SegmentationDataset.split_source`: the list file or folder a split comes from), how
its on-disk label values become train ids ``0..C-1`` / ``255`` (:meth:`raw_to_train` and
``raw_values``, turned into a :class:`~segbench.data.codec.LabelCodec`; or its own
:meth:`read_raw_label` / :meth:`read_label` for other file formats), its class names and
palette, and what its tree looks like and where it comes from (used in every "missing data"
message). Everything else — reading images and labels, checking sizes, applying the
albumentations pipeline, turning arrays into tensors, encoding predictions — lives here once.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segbench.data.codec import IGNORE, LabelCodec
from segbench.errors import CorruptFileError, DatasetNotFoundError, SegbenchError
from segbench.io import write_png

IGNORE_INDEX = IGNORE
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
    print(f"segbench: warning: {dataset}: {path} holds label values {sorted(values)} outside the "
          f"dataset's encoding ({pixels} pixels); they are ignored (255). `segbench data check` lists "
          f"every such file", file=sys.stderr, flush=True)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W uint8: workers hand over 1 byte a channel; the device
    normalises (:mod:`segbench.data.normalization`)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def label_tensor(label: np.ndarray) -> torch.Tensor:
    """Train ids in the smallest type that holds them (uint8: ids 0..C-1 and 255; int16 for a
    label set with more classes); the loss and the metrics widen them on the device."""
    label = np.ascontiguousarray(label)
    if label.dtype != np.uint8:
        label = label.astype(np.int16)
    return torch.from_numpy(label)


class SegmentationDataset(Dataset):
    """Base class: subclasses fill the class attributes and the ``list_samples`` /
    ``split_source`` hooks (and ``raw_to_train`` where the encoding is not identity)."""

    name: ClassVar[str] = "dataset"
    class_names: ClassVar[Sequence[str]] = ()
    palette: ClassVar[np.ndarray] = voc_colormap()  # row i = colour of train id i
    ignore_color: ClassVar[tuple[int, int, int]] = (224, 224, 192)
    splits: ClassVar[Sequence[str]] = ("train", "val")
    optional_splits: ClassVar[Sequence[str]] = ()  # `data check` notes their absence instead of failing
    expected_counts: ClassVar[dict[str, int]] = {}
    layout: ClassVar[str] = ""  # the expected tree, shown when something is missing
    source: ClassVar[str] = ""  # where the user downloads it
    raw_values: ClassVar[Sequence[int] | None] = None  # what a valid label file may hold; None: 0..C-1 and 255
    strict_values: ClassVar[bool] = True  # False: unexpected values are a warning in `data check`

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None):
        self.root = Path(root).expanduser()
        if split not in self.splits:
            raise SegbenchError(
                f"{self.name}: unknown split '{split}'; available: {', '.join(self.splits)}"
            )
        self.split = split
        self.transform = transform
        self.samples: list[tuple[Path, Path | None]] = self.list_samples()
        if not self.samples:
            raise self.missing(self.split_source(), f"no samples found for split '{split}'")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ---- hooks for subclasses -------------------------------------------------------------
    def list_samples(self) -> list[tuple[Path, Path | None]]:
        """Image and label paths of ``self.split``, in a deterministic order."""
        raise NotImplementedError

    def split_source(self) -> Path:
        """The list file or folder ``self.split`` is listed from, named when it lists no sample
        (each dataset says which; the root is only a fallback)."""
        return self.root

    def raw_to_train(self) -> dict[int, int]:
        """On-disk label value → train id; values not in it decode to 255. Default: identity
        on ``0..C-1`` (VOC, CamVid-style; 255 stays ignore)."""
        return {i: i for i in range(len(self.class_names))}

    def read_raw_label(self, path: Path) -> np.ndarray:
        """The label file's stored values (a palette PNG's indices, never its colours)."""
        return self.read_palette_png(path)

    def read_image(self, path: Path) -> np.ndarray:
        """Decode one image into H×W×3 uint8 RGB."""
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise self.corrupt(path)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    # ---- labels, through the codec --------------------------------------------------------
    @cached_property
    def codec(self) -> LabelCodec:
        allowed = self.raw_values
        if allowed is None:
            allowed = [*range(len(self.class_names)), IGNORE_INDEX]
        return LabelCodec(self.raw_to_train(), allowed)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """On-disk label array → H×W uint8 train ids (values not in the table → 255)."""
        return self.codec.decode(raw)

    def encode_label(self, train_ids) -> np.ndarray:
        """Train ids → the on-disk encoding (exact inverse of :meth:`decode` on valid ids)."""
        return self.codec.encode(train_ids)

    # encode_prediction, save_prediction and colorize read class attributes only: class methods, so
    # `segbench predict` writes predictions with the dataset class, no dataset on disk
    @classmethod
    def encode_prediction(cls, pred_trainids) -> np.ndarray:
        """What to write for the dataset's official evaluation format: train ids (uint8)
        unless the benchmark wants something else (Cityscapes: label ids)."""
        return np.asarray(pred_trainids).astype(np.uint8)

    @classmethod
    def save_prediction(cls, pred_trainids, path: str | Path) -> Path:
        """Write :meth:`encode_prediction` as an 8-bit PNG (atomically)."""
        return write_png(cls.encode_prediction(pred_trainids), path)

    def unexpected_values(self, raw: np.ndarray, path: Path | None = None) -> list[int]:
        """On-disk values present in ``raw`` that a valid label file never holds."""
        return self.codec.unexpected_values(raw)

    def read_label(self, path: Path) -> np.ndarray:
        """Decode one label file into an H×W uint8 array of train ids (255 = ignore)."""
        raw = self.read_raw_label(path)
        if raw.ndim != 2:
            raise CorruptFileError(
                f"corrupt or unreadable file: {path} (expected a single-channel label image, "
                f"got shape {raw.shape})")
        if raw.dtype == np.uint8 and self.strict_values:
            outside = self.codec.outside_raw[raw]  # one table lookup per pixel
            if outside.any():
                report_unexpected_labels(self.name, path, np.unique(raw[outside]).tolist(), int(outside.sum()))
        return self.decode(raw)

    def read_image_at(self, index: int) -> np.ndarray:
        """The decoded RGB image of sample ``index`` (for `data check`)."""
        return self.read_image(self.samples[index][0])

    def read_raw_label_at(self, index: int) -> np.ndarray:
        """The stored values of sample ``index``'s label (for `data check`)."""
        return self.read_raw_label(self.samples[index][1])

    def label_files(self) -> list[Path]:
        """Every label file on disk that some split of this dataset should reference (`data
        check` notes the ones its splits leave unused); none where labels are not files."""
        return []

    def load_label(self, index: int) -> np.ndarray | None:
        """Only the decoded label of sample ``index`` (for `data stats`)."""
        label_path = self.samples[index][1]
        return None if label_path is None else self.read_label(label_path)

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
        return {"image": image_tensor(image), "label": label_tensor(label), "id": self.sample_id(index)}

    @classmethod
    def colorize(cls, label: np.ndarray) -> np.ndarray:
        """Train ids → H×W×3 RGB with the dataset's palette (ignore shown in ``ignore_color``)."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: len(cls.class_names)] = cls.palette[: len(cls.class_names)]
        lut[IGNORE_INDEX] = cls.ignore_color
        return lut[label]
