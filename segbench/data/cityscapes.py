"""Cityscapes (Cordts et al., CVPR 2016), read from the official zips' tree.

``gtFine/<split>/<city>/*_gtFine_labelIds.png`` hold the 34 label ids (0..33) of
cityscapesScripts' ``labels.py``; 19 of them are evaluated and become train ids 0..18, the
rest 255. License plates (id -1) are never drawn into labelIds (``json2labelImg`` skips
negative ids), so their pixels carry the vehicle's id. ``*_gtFine_labelTrainIds.png`` (written
by ``csCreateTrainIdLabelImgs``, mmseg's converter or ``segbench data prepare``) are used when
present; they equal ``LUT[labelIds]`` exactly, since both are drawn from the same polygons.

Annotations (``annotations``):

* ``fine`` — gtFine for the split (train 2975 / val 500 / test 1525 with dummy labels);
* ``coarse`` — gtCoarse for the split (train / val / train_extra 19,998);
* ``fine+coarse`` — the PSPNet / DeepLab v3 recipe: the split's gtFine images plus, for
  ``train`` and ``trainval``, the 19,998 ``train_extra`` images with gtCoarse labels.

Predictions for the official evaluator are label-id PNGs (:meth:`encode_prediction`).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from segbench.data.base import SegmentationDataset
from segbench.data.card import Archive, DatasetCard, DatasetDownload
from segbench.data.codec import LabelCodec
from segbench.data.fixtures import make_cityscapes

# (name, id, trainId, colour) for ids 0..33 — cityscapesScripts helpers/labels.py.
LABELS = (
    ("unlabeled", 0, 255, (0, 0, 0)), ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)), ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)), ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)), ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)), ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)), ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)), ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)), ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)), ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)), ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)), ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)), ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)), ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)), ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)), ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)), ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)), ("bicycle", 33, 18, (119, 11, 32)),
)
ID_TO_TRAINID = {lid: tid for _, lid, tid, _ in LABELS}
CLASSES = tuple(name for name, _, tid, _ in LABELS if tid != 255)
PALETTE = np.array([color for _, _, tid, color in LABELS if tid != 255], dtype=np.uint8)
# labelIds ↔ train ids. Encoding gives each train id its label id and 255 (or any unused
# train id) id 0 "unlabeled", as the official evaluator reads them.
CODEC = LabelCodec(ID_TO_TRAINID, range(34))


def trainid_to_id(pred_trainids) -> np.ndarray:
    """Train ids → label ids, as the official evaluator reads them (255 → 0 "unlabeled")."""
    return CODEC.encode(pred_trainids)


class Cityscapes(SegmentationDataset):
    """Cityscapes ``train`` / ``val`` / ``test`` / ``train_extra`` / ``trainval``, 19 classes.

    ``label_type``: ``auto`` (labelTrainIds when the file exists, else labelIds through the
    LUT), ``labelIds`` or ``labelTrainIds``.
    """

    name = "cityscapes"
    class_names = CLASSES
    palette = PALETTE
    ignore_color = (0, 0, 0)
    splits = ("train", "val", "test", "train_extra", "trainval")
    optional_splits = ("train_extra",)  # `data check` notes its absence instead of failing
    expected_counts: ClassVar[dict[str, int]] = {"train": 2975, "val": 500, "test": 1525, "train_extra": 19998, "trainval": 3475}
    raw_values = tuple(range(34))  # labelIds; labelTrainIds files hold 0..18 and 255
    layout = """\
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
                                  (+ _gtFine_labelTrainIds.png after `segbench data prepare`)
  leftImg8bit/train_extra/<city>/...   gtCoarse/{train,val,train_extra}/<city>/..._gtCoarse_labelIds.png
                                  (only for annotations=coarse or fine+coarse)"""
    source = ("https://www.cityscapes-dataset.com/downloads/ (registration; gtFine_trainvaltest.zip and "
              "leftImg8bit_trainvaltest.zip; gtCoarse.zip and leftImg8bit_trainextra.zip for coarse), "
              "unzip all into data.root")
    card = DatasetCard(
        download=DatasetDownload(
            (Archive(file="gtFine_trainvaltest.zip", url=None, checksum=None,
                     source="www.cityscapes-dataset.com/downloads/ (packageID=1, account needed)",
                     size="241 MB (downloads page)"),
             Archive(file="leftImg8bit_trainvaltest.zip", url=None, checksum=None,
                     source="www.cityscapes-dataset.com/downloads/ (packageID=3, account needed)",
                     size="11 GB (downloads page)")),
            manual=("Cityscapes needs an account. Register at https://www.cityscapes-dataset.com/register/, then "
                    "either download gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip from "
                    "https://www.cityscapes-dataset.com/downloads/ (for the fine+coarse recipes also gtCoarse.zip "
                    "and leftImg8bit_trainextra.zip), or run `pip install cityscapesscripts` and "
                    "`CITYSCAPES_USERNAME=... CITYSCAPES_PASSWORD=... csDownload -d {downloads} "
                    "gtFine_trainvaltest.zip leftImg8bit_trainvaltest.zip`. Put the zips into {downloads} and "
                    "rerun this command: it unpacks, prepares and checks them.")),
        converter="segbench.data.prepare_cityscapes:prepare_cityscapes",
        fixture=make_cityscapes)

    def __init__(self, root, split, transform=None, annotations: str = "fine", label_type: str = "auto"):
        if annotations not in ("fine", "coarse", "fine+coarse"):
            raise ValueError(f"cityscapes: annotations must be fine, coarse or fine+coarse, not {annotations!r}")
        if label_type not in ("auto", "labelIds", "labelTrainIds"):
            raise ValueError(f"cityscapes: label_type must be auto, labelIds or labelTrainIds, not {label_type!r}")
        self.annotations = annotations
        self.label_type = label_type
        counts = dict(self.expected_counts)
        if annotations == "fine+coarse":
            counts["train"] += counts["train_extra"]
            counts["trainval"] += counts["train_extra"]
        self.expected_counts = counts
        super().__init__(root, split, transform)

    def raw_to_train(self):
        return ID_TO_TRAINID

    def parts(self) -> list[tuple[str, str]]:
        """(image split folder, annotation folder) pairs that make up ``self.split``."""
        splits = {"trainval": ["train", "val"]}.get(self.split, [self.split])
        if self.annotations == "coarse":
            return [(s, "gtCoarse") for s in splits]
        if self.split == "train_extra":  # has no fine labels
            return [("train_extra", "gtCoarse")]
        parts = [(s, "gtFine") for s in splits]
        if self.annotations == "fine+coarse" and self.split in ("train", "trainval"):
            parts.append(("train_extra", "gtCoarse"))
        return parts

    def split_source(self) -> Path:
        folders = sorted({split for split, _ in self.parts()})
        images = self.root / "leftImg8bit"
        return images / folders[0] if len(folders) == 1 else images

    def list_samples(self):
        if not self.root.is_dir():
            raise self.missing(self.root, "dataset root does not exist")
        images = self.root / "leftImg8bit"
        if not images.is_dir():
            if (self.root / "gtFine").is_dir() or (self.root / "gtCoarse").is_dir():
                raise self.missing(images, "the annotations (gtFine/) are there but the images are not "
                                   "(unzip leftImg8bit_trainvaltest.zip into data.root); missing")
            raise self.missing(images, "'leftImg8bit' folder missing")
        samples = []
        for split, gt in self.parts():
            img_dir = self.require(images / split, f"'leftImg8bit/{split}' folder missing"
                                   + (" (needs leftImg8bit_trainextra.zip)" if split == "train_extra" else ""))
            gt_dir = self.require(self.root / gt / split, f"'{gt}/{split}' folder missing"
                                  + (" (needs gtCoarse.zip)" if gt == "gtCoarse" else ""))
            for image in sorted(img_dir.glob("*/*_leftImg8bit.png")):
                stem = image.name[: -len("_leftImg8bit.png")]
                samples.append((image, self.label_path(gt_dir / image.parent.name, stem, gt)))
        return samples

    def label_path(self, folder: Path, stem: str, gt: str) -> Path:
        ids = folder / f"{stem}_{gt}_labelIds.png"
        train_ids = folder / f"{stem}_{gt}_labelTrainIds.png"
        if self.label_type == "labelTrainIds" or (self.label_type == "auto" and train_ids.exists()):
            return train_ids
        return ids

    def read_label(self, path: Path) -> np.ndarray:
        raw = self.read_raw_label(path)
        if raw.ndim != 2:
            raise self.corrupt(path, f"expected a single-channel label image, got shape {raw.shape}")
        if path.name.endswith("_labelTrainIds.png"):
            return np.where(raw < len(CLASSES), raw, 255).astype(np.uint8)
        return self.decode(raw)

    def unexpected_values(self, raw, path: Path | None = None) -> list[int]:
        if path is not None and path.name.endswith("_labelTrainIds.png"):
            present = np.unique(raw)
            return [int(v) for v in present if v >= len(CLASSES) and v != 255]
        return super().unexpected_values(raw, path)

    def load(self, index):
        image_path, label_path = self.samples[index]
        self.require(image_path, "image missing")
        self.require(label_path, f"label missing for {image_path.name}")
        return super().load(index)

    def sample_id(self, index: int) -> str:
        return self.samples[index][0].name[: -len("_leftImg8bit.png")]

    @classmethod
    def encode_prediction(cls, pred_trainids) -> np.ndarray:
        """Label ids (0..33) for cityscapesScripts' ``evalPixelLevelSemanticLabeling``."""
        return trainid_to_id(pred_trainids)

    def prediction_filename(self, index: int) -> str:
        """``<city>_<seq>_<frame>_leftImg8bit.png``: the evaluator matches results by this prefix."""
        return self.samples[index][0].name

    def label_files(self) -> list[Path]:
        files = []
        for split, gt in self.parts():
            for kind in ("labelIds", "labelTrainIds"):
                for path in (self.root / gt / split).glob(f"*/*_{gt}_{kind}.png"):
                    stem = path.name[: -len(f"_{gt}_{kind}.png")]
                    files.append(self.label_path(path.parent, stem, gt))
        return sorted(set(files))
