"""``segbench data prepare data=voc_aug``: SBD ``cls/*.mat`` → ``SegmentationClassAug/*.png``
plus the ``trainaug.txt`` / ``aug.txt`` lists (the recipe of DeepLab and mmsegmentation's
``voc_aug.py``; see :mod:`segbench.data.voc`). Idempotent and atomic
(:mod:`segbench.data.conversion`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segbench.data.conversion import (
    STAMP,
    already_prepared,
    build_dir_atomically,
    built_by_us,
    mark_prepared,
    progress,
)
from segbench.data.voc import (
    SBD_SOURCE,
    VOC_SOURCE,
    find_sbd,
    read_id_list,
    read_sbd_mat,
    voc_base,
)
from segbench.errors import DatasetNotFoundError
from segbench.io import write_text


def prepare_voc_aug(root: Path, force: bool = False) -> dict | None:
    """SBD ``cls/*.mat`` → ``VOC2012/SegmentationClassAug/*.png`` + ``trainaug.txt`` / ``aug.txt``."""
    root = Path(root)
    if already_prepared(root, "voc_aug", force):
        return None
    base = voc_base(root)
    lists = base / "ImageSets" / "Segmentation"
    for name in ("train.txt", "val.txt"):
        if not (lists / name).is_file():
            raise DatasetNotFoundError(f"voc_aug: VOC 2012 split list missing: {lists / name}\n"
                                       f"Expected data.root/VOCdevkit/VOC2012/ from {VOC_SOURCE}")
    voc_train, voc_val = read_id_list(lists / "train.txt"), read_id_list(lists / "val.txt")
    sbd, aug = find_sbd(root), base / "SegmentationClassAug"
    if sbd is None and not aug.is_dir():
        raise DatasetNotFoundError(f"voc_aug: SBD not found: {root / 'benchmark_RELEASE' / 'dataset' / 'cls'}\n"
                                   f"Get it from: {SBD_SOURCE}")
    if sbd is not None and (not aug.is_dir() or built_by_us(aug) or force):
        convert_sbd_labels(sbd, aug)
    else:
        print(f"voc_aug: using the existing {aug} as is")
    if sbd is not None:
        sbd_ids = read_id_list(sbd / "train.txt") + read_id_list(sbd / "val.txt")
    else:
        sbd_ids = [p.stem for p in aug.glob("*.png")]
    trainaug = sorted((set(voc_train) | set(sbd_ids)) - set(voc_val))
    aug_only = sorted(set(sbd_ids) - set(voc_train) - set(voc_val))
    write_text(lists / "trainaug.txt", "\n".join(trainaug) + "\n")
    write_text(lists / "aug.txt", "\n".join(aug_only) + "\n")
    note = "" if len(trainaug) == 10582 else "; the official trainaug has 10582"
    print(f"voc_aug: wrote {lists / 'trainaug.txt'} ({len(trainaug)} ids{note}) and aug.txt ({len(aug_only)} ids)")
    mark_prepared(root, "voc_aug", trainaug=len(trainaug), aug=len(aug_only))
    return {"trainaug": len(trainaug), "aug": len(aug_only)}


def convert_sbd_labels(sbd: Path, aug: Path) -> None:
    """Every ``sbd/cls/<id>.mat`` → grey ``aug/<id>.png`` (0..20), the folder built whole."""
    mats = sorted((sbd / "cls").glob("*.mat"))
    print(f"voc_aug: converting {len(mats)} SBD .mat files from {sbd / 'cls'} into {aug}")

    def build(tmp: Path) -> None:
        for mat in progress(mats, total=len(mats), desc="SBD .mat -> PNG"):
            Image.fromarray(read_sbd_mat(mat).astype(np.uint8)).save(tmp / f"{mat.stem}.png")
        (tmp / STAMP).write_text("SBD cls/*.mat converted by segbench data prepare\n")

    build_dir_atomically(aug, build)
