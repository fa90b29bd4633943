"""SUN RGB-D, 37 classes (Song, Lichtenberg, Xiao, CVPR 2015), in the layout of the widely
used segmentation release (github.com/ankurhanda/sunrgbd-meta-data):

* ``SUNRGBD-train_images/img-000001.jpg .. img-005285.jpg`` (5,285 train images),
* ``SUNRGBD-test_images/img-000001.jpg .. img-005050.jpg`` (5,050 test images),
* ``sunrgbd_train_test_labels/img-000001.png .. img-010335.png``: labels 1..5050 are the test
  images, 5051..10335 the train images (train image k ↔ label k + 5050, per the release README);
* optionally ``sunrgbd_{train,test}_depth/`` depth PNGs (value / 10000 = metres, per the README).

Folders are searched recursively (whether the archives have a top-level folder is not
documented), and train images already renamed to 5051..10335 (a common helper script does
that) are recognised. ``segbench data prepare data=sunrgbd`` builds this layout from the
official ``SUNRGBD.zip`` + ``SUNRGBDtoolbox.zip`` (:func:`segbench.data.prepare_sunrgbd.convert_sunrgbd`,
which ``scripts/convert_sunrgbd.py`` also runs, for folders outside ``data.root``).

Label value 0 = unlabeled → 255, class k (1..37) → train id k - 1.

``modalities``: ``[rgb]`` (default) or ``[rgb, depth]``. With depth, every item carries an
extra ``"depth"`` tensor 1×H×W in metres (0 = no measurement, also where padding/rotation
filled the border), geometrically transformed with the image and label; ``"image"`` stays
3-channel RGB, so every RGB model runs unchanged.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import torch

from segbench.data.base import IGNORE_INDEX, SegmentationDataset, image_tensor, label_tensor
from segbench.data.card import Archive, DatasetCard, DatasetDownload
from segbench.data.fixtures import make_sunrgbd

CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain",
    "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
)
NUM_TEST = 5050
TRAIN_DIR, TEST_DIR = "SUNRGBD-train_images", "SUNRGBD-test_images"
LABEL_DIR = "sunrgbd_train_test_labels"
DEPTH_DIRS = {"train": "sunrgbd_train_depth", "test": "sunrgbd_test_depth"}
_NUMBER = re.compile(r"(\d+)$")


def numbered_files(folder: Path, suffix: str) -> dict[int, Path]:
    """``{number: path}`` for every ``*<digits><suffix>`` file below ``folder`` (recursive)."""
    found = {}
    if folder.is_dir():
        for path in folder.rglob(f"*{suffix}"):
            match = _NUMBER.search(path.stem)
            if match and not path.name.startswith("."):
                found[int(match.group(1))] = path
    return found


def sun_palette() -> np.ndarray:
    """37 well-separated colours (HSV wheel at three brightness levels); SUN RGB-D has no
    official palette."""
    hues = np.linspace(0, 179, 13, endpoint=False)
    hsv = np.array([(h, 200, v) for v in (255, 190, 125) for h in hues][:37], dtype=np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


class SUNRGBD(SegmentationDataset):
    """SUN RGB-D ``train`` (5,285) / ``test`` (5,050; the papers' evaluation split)."""

    name = "sunrgbd"
    class_names = CLASSES
    palette = sun_palette()
    ignore_color = (0, 0, 0)
    splits = ("train", "test")
    expected_counts: ClassVar[dict[str, int]] = {"train": 5285, "test": NUM_TEST}
    raw_values = tuple(range(len(CLASSES) + 1))
    layout = f"""\
  {TRAIN_DIR}/img-000001.jpg .. img-005285.jpg
  {TEST_DIR}/img-000001.jpg .. img-005050.jpg
  {LABEL_DIR}/img-000001.png .. img-010335.png   (1..5050 test, 5051..10335 train; 0 = unlabeled)
  {DEPTH_DIRS['train']}/  {DEPTH_DIRS['test']}/      (optional, for modalities=[rgb,depth])
  or, before `segbench data prepare`: SUNRGBD/ and SUNRGBDtoolbox/ (official zips)"""
    source = ("https://github.com/ankurhanda/sunrgbd-meta-data (SUNRGBD-train_images.tgz, "
              "SUNRGBD-test_images.tgz, sunrgbd_train_test_labels.tar.gz; unpack into data.root) or the "
              "official https://rgbd.cs.princeton.edu/ (SUNRGBD.zip + SUNRGBDtoolbox.zip, then "
              "`segbench data prepare data=sunrgbd`)")
    card = DatasetCard(
        download=DatasetDownload(
            (Archive(file="SUNRGBD-train_images.tgz", url="http://www.doc.ic.ac.uk/~ahanda/SUNRGBD-train_images.tgz",
                     checksum=None, source="github.com/ankurhanda/sunrgbd-meta-data README (train images, 5,285); "
                                           "no checksum published"),
             Archive(file="SUNRGBD-test_images.tgz", url="http://www.doc.ic.ac.uk/~ahanda/SUNRGBD-test_images.tgz",
                     checksum=None, source="github.com/ankurhanda/sunrgbd-meta-data README (test images, 5,050); "
                                           "no checksum published"),
             Archive(file="sunrgbd_train_test_labels.tar.gz",
                     url="https://github.com/ankurhanda/sunrgbd-meta-data/raw/master/sunrgbd_train_test_labels.tar.gz",
                     checksum=None, source="the file in github.com/ankurhanda/sunrgbd-meta-data (37-class labels, "
                                           "10,335); no checksum published")),
            notes=(("The official SUNRGBD.zip + SUNRGBDtoolbox.zip (rgbd.cs.princeton.edu/data/; the toolbox's "
                    "md5 18d22e1761d36352f37232cba102f91f per mmdetection3d's data/sunrgbd/README.md) also work: "
                    "unzip both into data.root and run `segbench data prepare data=sunrgbd`."),)),
        converter="segbench.data.prepare_sunrgbd:prepare_sunrgbd",
        fixture=make_sunrgbd)

    def __init__(self, root, split, transform=None, modalities=("rgb",), depth_scale: float = 10000.0):
        mods = [modalities] if isinstance(modalities, str) else list(modalities)
        if mods == ["rgbd"]:
            mods = ["rgb", "depth"]
        if mods not in (["rgb"], ["rgb", "depth"]):
            raise ValueError(f"sunrgbd: modalities must be [rgb] or [rgb, depth], not {modalities!r}")
        self.use_depth = "depth" in mods
        self.depth_scale = depth_scale
        self.depth_paths: list[Path | None] = []
        super().__init__(root, split, transform)

    def raw_to_train(self):
        return {k: k - 1 for k in range(1, len(CLASSES) + 1)}  # 0 (unlabeled) → 255

    def split_source(self) -> Path:
        return self.root / (TRAIN_DIR if self.split == "train" else TEST_DIR)

    def list_samples(self):
        if not self.root.is_dir():
            raise self.missing(self.root, "dataset root does not exist")
        image_dir = self.split_source()
        if not image_dir.is_dir():
            hint = ("the official SUNRGBD/ tree is there: run `segbench data prepare data=sunrgbd` first"
                    if (self.root / "SUNRGBD").is_dir() else f"'{image_dir.name}' folder missing")
            raise self.missing(image_dir, hint)
        label_dir = self.require(self.root / LABEL_DIR, f"'{LABEL_DIR}' folder missing")
        images = numbered_files(image_dir, ".jpg")
        labels = numbered_files(label_dir, ".png")
        offset = 0
        if self.split == "train" and images and min(images) <= NUM_TEST:
            offset = NUM_TEST  # release numbering: train image k ↔ label k + 5050
        depth = numbered_files(self.root / DEPTH_DIRS[self.split], ".png") if self.use_depth else {}
        if self.use_depth and not depth:
            raise self.missing(self.root / DEPTH_DIRS[self.split], "modalities includes depth but no depth PNGs found")
        samples = []
        for k in sorted(images):
            n = k + offset
            samples.append((images[k], labels.get(n, label_dir / f"img-{n:06d}.png")))
            if self.use_depth:
                self.depth_paths.append(depth.get(k, depth.get(n)))
        return samples

    def load(self, index):
        image_path, label_path = self.samples[index]
        self.require(image_path, "image missing")
        self.require(label_path, f"label missing for {image_path.name}")
        return super().load(index)

    def read_depth(self, index: int) -> np.ndarray:
        path = self.depth_paths[index]
        if path is None:
            raise self.missing(self.samples[index][0], "no depth PNG for this image")
        depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if depth is None or depth.ndim != 2:
            raise self.corrupt(path, "expected a single-channel depth PNG")
        return depth.astype(np.float32) / self.depth_scale

    def __getitem__(self, index: int) -> dict:
        if not self.use_depth:
            return super().__getitem__(index)
        image, label = self.load(index)
        depth = self.read_depth(index)
        if depth.shape != label.shape:
            raise self.corrupt(self.depth_paths[index], f"depth is {depth.shape[::-1]}, image is {label.shape[::-1]}")
        if self.transform is not None:
            # Depth rides along as an extra mask: same geometry, nearest-neighbour resampling.
            # Masks are padded with 255, a value real depth (metres) never takes: reset it to 0.
            out = self.transform(image=image, mask=label, masks=[depth])
            image, label, depth = out["image"], out["mask"], out["masks"][0]
            depth = np.where(depth == IGNORE_INDEX, 0.0, depth).astype(np.float32)
        return {
            "image": image_tensor(image),
            "label": label_tensor(label),
            "depth": torch.from_numpy(np.ascontiguousarray(depth))[None].float(),
            "id": self.sample_id(index),
        }

    def label_files(self) -> list[Path]:
        labels = numbered_files(self.root / LABEL_DIR, ".png")
        wanted = range(1, NUM_TEST + 1) if self.split == "test" else range(NUM_TEST + 1, 10**6)
        return sorted(p for n, p in labels.items() if n in wanted)
