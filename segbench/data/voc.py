"""PASCAL VOC 2012 segmentation, and the SBD-augmented "trainaug" set (10,582 images).

VOC labels are palette PNGs whose pixel *indices* are the class ids (0 = background, 1..20 the
object classes, 255 = the void band around objects), so they are read as indices, never
converted to RGB. SBD (Hariharan et al., ICCV 2011) labels are MATLAB v5 ``.mat`` structs
``GTcls`` with a ``Segmentation`` map of class ids 0..20 and no void band.

``voc_aug`` follows the recipe of DeepLab and mmsegmentation (``tools/dataset_converters/voc_aug.py``):
trainaug = (VOC train ∪ SBD train ∪ SBD val) − VOC val, and its val split is VOC val with the
original ``SegmentationClass`` labels. Because SBD's train/val lists contain VOC 2012 val images,
VOC val is always subtracted here, whatever list file the user brings.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.io import loadmat

from segbench.data.base import SegmentationDataset, voc_colormap
from segbench.data.card import Archive, DatasetCard, DatasetDownload
from segbench.data.fixtures import make_voc, make_voc_aug_sbd
from segbench.errors import CorruptFileError
from segbench.io import write_png
from segbench.trust import list_file_entries

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
VOC_SOURCE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar, unpack into data.root)"
SBD_SOURCE = ("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz "
              "(SBD, unpack into data.root so that data.root/benchmark_RELEASE/dataset exists)")

VOC2012_ARCHIVE = Archive(
    file="VOCtrainval_11-May-2012.tar",
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    checksum="md5:6cd6e144f989b92b3379bac3b3de84fd",
    source="URL: the VOC2012 page (host.robots.ox.ac.uk/pascal/VOC/voc2012/); md5: torchvision "
           "datasets/voc.py DATASET_YEAR_DICT['2012']",
    size="2 GB (VOC2012 page: '2GB tar file')",
)
SBD_ARCHIVE = Archive(
    file="benchmark.tgz",
    url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    checksum="md5:82b4d87ceb2ed10f6038a1cba92111cb",
    source="URL and md5: torchvision datasets/sbd.py SBDataset (url, md5); the SBD page "
           "home.bharathh.info/pubs/codes/SBD/download.html links the same file",
)


def voc_base(root: Path) -> Path:
    """The ``VOC2012`` folder, whether ``root`` points at it or at the folder holding ``VOCdevkit``."""
    nested = Path(root) / "VOCdevkit" / "VOC2012"
    return nested if nested.is_dir() else Path(root)


def find_sbd(root: Path) -> Path | None:
    """SBD's ``dataset`` folder: torchvision's place, or mmseg's ``VOCdevkit/VOCaug``."""
    root = Path(root)
    for cand in (root / "benchmark_RELEASE" / "dataset", root / "VOCdevkit" / "VOCaug" / "dataset",
                 voc_base(root).parent / "VOCaug" / "dataset", root / "VOCaug" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    return None


def read_id_list(path: Path) -> list[str]:
    """Ids of a list file: bare ids (VOC, SBD), or DeepLab-style ``/JPEGImages/<id>.jpg ...`` lines."""
    # an entry with '..' is refused with its file and line: ids become output file names
    return [Path(fields[0]).stem for _, fields in list_file_entries(path)]


def read_sbd_mat(path: Path) -> np.ndarray:
    """Class map of one SBD ``cls/<id>.mat`` (MATLAB v5 struct ``GTcls``), H×W uint8 0..20.

    Same access as torchvision's ``SBDataset``: ``loadmat(f)['GTcls'][0]['Segmentation'][0]``.
    """
    try:
        seg = loadmat(str(path))["GTcls"][0]["Segmentation"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise CorruptFileError(f"corrupt or unreadable file: {path} ({err})") from None
    return np.asarray(seg)


class VOCSegmentation(SegmentationDataset):
    """VOC 2012 ``train`` (1464), ``val`` (1449), ``trainval`` (2913) from ``ImageSets/Segmentation``.

    ``root`` may be the folder holding ``VOCdevkit`` or ``VOCdevkit/VOC2012`` itself.
    """

    name = "voc"
    class_names = VOC_CLASSES
    palette = voc_colormap()
    splits = ("train", "val", "trainval")
    expected_counts: ClassVar[dict[str, int]] = {"train": 1464, "val": 1449, "trainval": 2913}
    image_dir = "JPEGImages"
    label_dir = "SegmentationClass"
    layout = """\
  VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          (palette PNG: index = class id, 255 = void border)
    ImageSets/Segmentation/{train,val,trainval}.txt"""
    source = VOC_SOURCE
    card = DatasetCard(download=DatasetDownload((VOC2012_ARCHIVE,)), fixture=make_voc)

    @property
    def base(self) -> Path:
        """The ``VOC2012`` folder, whether ``root`` points at it or at its parent."""
        return voc_base(self.root)

    def split_source(self) -> Path:
        return self.base / "ImageSets" / "Segmentation" / f"{self.split}.txt"

    def read_ids(self, path: Path) -> list[str]:
        self.require(path, "split list missing")
        return read_id_list(path)

    def list_samples(self):
        if not self.root.is_dir():
            raise self.missing(self.root, "dataset root does not exist")
        base = self.base
        self.require(base / self.image_dir, f"'{self.image_dir}' folder missing")
        self.require(base / self.label_dir, f"'{self.label_dir}' folder missing")
        ids = self.read_ids(self.split_source())
        return [(base / self.image_dir / f"{i}.jpg", base / self.label_dir / f"{i}.png") for i in ids]

    def load(self, index):
        image_path, label_path = self.samples[index]
        self.require(image_path, "image listed in the split file is missing")
        self.require(label_path, "label listed in the split file is missing")
        return super().load(index)

    def label_files(self) -> list[Path]:
        """Every label file on disk that some split of this dataset should reference."""
        folder = self.base / self.label_dir
        return sorted(folder.glob("*.png")) if folder.is_dir() else []

    @classmethod
    def save_prediction(cls, pred_trainids, path):
        """VOC's submission format: an indexed PNG with the VOC colour map."""
        return write_png(cls.encode_prediction(pred_trainids), path, palette=voc_colormap())


class VOCAugSegmentation(VOCSegmentation):
    """VOC 2012 + SBD: ``train`` (= trainaug, 10,582 images), ``val`` = VOC val (1,449).

    Labels of a trainaug image come from, in order of preference: VOC ``SegmentationClass``
    (the finer VOC annotation, for the 1,464 VOC train images), then a
    ``SegmentationClassAug/<id>.png`` folder (from ``segbench data prepare`` or DeepLab's
    ``SegmentationClassAug.zip``), then SBD's ``cls/<id>.mat`` read directly.

    ``labels``: ``auto`` (as above), ``png`` (require SegmentationClassAug) or ``mat``
    (require SBD, ignore any SegmentationClassAug folder).
    """

    name = "voc_aug"
    splits = ("train", "val")
    expected_counts: ClassVar[dict[str, int]] = {"train": 10582, "val": 1449}
    aug_dir = "SegmentationClassAug"
    list_names = ("trainaug.txt", "train_aug.txt")
    layout = VOCSegmentation.layout + """
    SegmentationClassAug/<id>.png       (optional: grey PNG 0..20; made by `segbench data prepare`)
    ImageSets/Segmentation/trainaug.txt (optional; also accepted: train_aug.txt, DeepLab style)
  benchmark_RELEASE/dataset/            (SBD; not needed once SegmentationClassAug exists)
    img/<id>.jpg  cls/<id>.mat  train.txt  val.txt"""
    source = f"{VOC_SOURCE}; {SBD_SOURCE}"
    card = DatasetCard(download=DatasetDownload((VOC2012_ARCHIVE, SBD_ARCHIVE)),
                       converter="segbench.data.prepare_voc:prepare_voc_aug", fixture=make_voc_aug_sbd)

    def __init__(self, root, split, transform=None, labels: str = "auto"):
        if labels not in ("auto", "png", "mat"):
            raise ValueError(f"voc_aug: labels must be auto, png or mat, not {labels!r}")
        self.labels = labels
        self.excluded_val: list[str] = []
        super().__init__(root, split, transform)

    # ---- where things are -----------------------------------------------------------------
    def trainaug_list(self) -> Path | None:
        for folder in (self.base / "ImageSets" / "Segmentation", self.base, self.root):
            for name in self.list_names:
                if (folder / name).is_file():
                    return folder / name
        return None

    def split_source(self) -> Path:
        if self.split == "val":
            return super().split_source()
        listed = self.trainaug_list() if self.labels != "mat" else None
        return listed or self.base / "ImageSets" / "Segmentation"

    def voc_ids(self, split: str) -> list[str]:
        return self.read_ids(self.base / "ImageSets" / "Segmentation" / f"{split}.txt")

    # ---- listing ----------------------------------------------------------------------------
    def list_samples(self):
        if self.split == "val":  # VOC val, original labels with their 255 band
            return super().list_samples()
        if not self.root.is_dir():
            raise self.missing(self.root, "dataset root does not exist")
        base = self.base
        self.require(base / self.image_dir, f"'{self.image_dir}' folder missing")
        sbd = find_sbd(self.root) if self.labels != "png" else None
        aug = base / self.aug_dir if self.labels != "mat" else None
        aug = aug if aug is not None and aug.is_dir() else None
        if self.labels == "png" and aug is None:
            raise self.missing(base / self.aug_dir, "labels=png but the SegmentationClassAug folder is missing")
        if aug is None and sbd is None:
            raise self.missing(self.root / "benchmark_RELEASE" / "dataset",
                               "neither SBD (benchmark_RELEASE/dataset/cls) nor VOC2012/SegmentationClassAug found")
        val = set(self.voc_ids("val"))
        list_file = self.trainaug_list() if self.labels != "mat" else None
        if list_file is not None:
            ids = self.read_ids(list_file)
        else:  # the union mmseg's voc_aug.py builds
            ids = self.voc_ids("train")
            if sbd is not None:
                ids += self.read_ids(sbd / "train.txt") + self.read_ids(sbd / "val.txt")
            else:
                ids += [p.stem for p in aug.glob("*.png")]
        ids = set(ids)
        self.excluded_val = sorted(ids & val)
        if self.excluded_val and list_file is not None:
            warnings.warn(f"voc_aug: {list_file} lists {len(self.excluded_val)} VOC val images "
                          f"(e.g. {self.excluded_val[0]}); they are left out of trainaug", stacklevel=2)
        ids = sorted(ids - val)

        voc_labelled = _stems(base / self.label_dir, ".png")
        aug_labelled = _stems(aug, ".png") if aug is not None else set()
        voc_images = _stems(base / self.image_dir, ".jpg")
        samples = []
        for i in ids:
            if i in voc_labelled:
                label = base / self.label_dir / f"{i}.png"
            elif i in aug_labelled or sbd is None:
                label = aug / f"{i}.png"
            else:
                label = sbd / "cls" / f"{i}.mat"
            image = base / self.image_dir / f"{i}.jpg"
            if i not in voc_images and sbd is not None:
                image = sbd / "img" / f"{i}.jpg"
            samples.append((image, label))
        return samples

    def read_raw_label(self, path: Path) -> np.ndarray:
        if path.suffix == ".mat":
            return read_sbd_mat(path)
        return super().read_raw_label(path)

    def label_files(self) -> list[Path]:
        aug = self.base / self.aug_dir
        return super().label_files() + (sorted(aug.glob("*.png")) if aug.is_dir() else [])


def _stems(folder: Path | None, suffix: str) -> set[str]:
    """File stems in ``folder`` with ``suffix`` (one listdir, not one stat per id)."""
    if folder is None or not folder.is_dir():
        return set()
    return {name[: -len(suffix)] for name in os.listdir(folder) if name.endswith(suffix)}
