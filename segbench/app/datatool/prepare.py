"""``segbench data prepare data=<name> data.root=<dir>``: run the dataset's one-off conversion.

The converter is the one the dataset's card names (:mod:`segbench.data.card`), e.g.
:mod:`~segbench.data.prepare_voc` (SBD ``.mat`` → PNG + trainaug list),
:mod:`~segbench.data.prepare_cityscapes` (labelIds → labelTrainIds),
:mod:`~segbench.data.prepare_sunrgbd` (official toolbox ``.mat`` → the release layout). Each
is idempotent and atomic (:mod:`segbench.data.conversion`); a dataset whose card names none is
read as unpacked.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.data.card import card_of
from segbench.data.walk import dataset_class
from segbench.errors import DatasetNotFoundError


def prepare_dataset(cfg: DictConfig):
    name = cfg.data.name
    reader = dataset_class(cfg)
    converter = card_of(reader).converter_function()
    root = Path(cfg.data.root).expanduser()
    if converter is None:
        print(f"segbench data prepare: nothing to prepare for {name}; it is read as unpacked "
              f"(run `segbench data check data={name} data.root={root}` to verify the tree)")
        return None
    force = bool((cfg.get("prepare", {}) or {}).get("force", False))
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"{name}: dataset root does not exist: {root}\n"
            f"Expected layout under data.root:\n{reader.layout.rstrip()}\n"
            f"Get the data from: {reader.source}")
    return converter(root, force=force)
