"""``segbench data prepare data=<name> data.root=<dir>``: run the dataset's one-off conversion.

One converter per dataset that needs one: :mod:`~segbench.data.prepare_voc` (SBD ``.mat`` →
PNG + trainaug list), :mod:`~segbench.data.prepare_cityscapes` (labelIds → labelTrainIds),
:mod:`~segbench.data.prepare_sunrgbd` (official toolbox ``.mat`` → the release layout). Each
is idempotent and atomic (:mod:`segbench.data.conversion`); the other datasets are read as
unpacked.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from segbench.data.prepare_cityscapes import prepare_cityscapes
from segbench.data.prepare_sunrgbd import prepare_sunrgbd
from segbench.data.prepare_voc import prepare_voc_aug
from segbench.data.walk import dataset_class
from segbench.errors import DatasetNotFoundError

PREPARERS: dict[str, Callable[..., dict | None]] = {
    "voc_aug": prepare_voc_aug,
    "cityscapes": prepare_cityscapes,
    "sunrgbd": prepare_sunrgbd,
}


def prepare_dataset(cfg: DictConfig):
    name = cfg.data.name
    preparer = PREPARERS.get(name)
    root = Path(cfg.data.root).expanduser()
    if preparer is None:
        print(f"segbench data prepare: nothing to prepare for {name}; it is read as unpacked "
              f"(run `segbench data check data={name} data.root={root}` to verify the tree)")
        return None
    force = bool((cfg.get("prepare", {}) or {}).get("force", False))
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"{name}: dataset root does not exist: {root}\n"
            f"Expected layout under data.root:\n{dataset_class(cfg).layout.rstrip()}\n"
            f"Get the data from: {dataset_class(cfg).source}")
    return preparer(root, force=force)
