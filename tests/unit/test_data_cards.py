"""Dataset cards: each reader class declares its download entry, converter and fixture maker
(segbench/data/card.py), and `segbench data download / prepare` and the fixtures read them."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segbench.app.datatool import download, prepare
from segbench.data import card as card_module
from segbench.data import fixtures
from segbench.data.card import DatasetCard, card_of, cards, reader_classes
from segbench.data.voc import VOCAugSegmentation, VOCSegmentation
from segbench.errors import SegbenchError
from segbench.trust import CONF_DIR
from tests.conftest import compose

CONFIGS = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
GENERATED = {"synthetic"}  # written by its reader on first use: nothing to download


class ToyData(VOCSegmentation):
    """A dataset added the way the README says: a reader class with its card."""

    name = "toy"
    card = DatasetCard(no_download="toy data is made by hand", converter="tests.unit.test_data_cards:convert_toy")


CONVERTED: list[tuple[Path, bool]] = []


def convert_toy(root: Path, force: bool = False) -> dict:
    CONVERTED.append((root, force))
    return {"converted": 1}


def toy_config(tmp_path, *overrides):
    return compose("datatool", ["data=voc", f"data.root={tmp_path}", "data.name=toy",
                                f"data.dataset._target_={__name__}.ToyData", *overrides])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_dataset_config_names_a_reader_with_its_own_card(name):
    reader = reader_classes()[name]
    assert reader.name == name == OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml").name
    card = card_of(reader)
    if card.download is None:
        assert card.no_download, f"{name}: a card without a download entry says why (no_download)"
    else:
        assert card.download.archives and not card.no_download
    if not card.no_download:  # read from disk: the tests and the smoke runs need its tiny copy
        assert callable(card.fixture), f"{name}: no fixture maker"
    if card.converter is not None:
        assert callable(card.converter_function()), card.converter


def test_a_subclass_does_not_inherit_its_parents_card():
    class Unnamed(VOCSegmentation):
        pass

    assert card_of(VOCAugSegmentation) is not card_of(VOCSegmentation)
    with pytest.raises(SegbenchError, match="declares no dataset card"):
        card_of(Unnamed)


def test_the_download_catalogue_is_the_cards():
    catalogue = download.catalogue()
    assert set(catalogue) == set(CONFIGS) - GENERATED
    for name, entry in catalogue.items():
        assert entry is card_of(reader_classes()[name]).download
    assert download.catalogue()["voc_aug"].archives[0] is download.catalogue()["voc"].archives[0]  # one VOC tar


def test_prepare_runs_the_converter_the_configured_readers_card_names(tmp_path):
    CONVERTED.clear()
    assert prepare.prepare_dataset(toy_config(tmp_path, "prepare.force=true")) == {"converted": 1}
    assert CONVERTED == [(tmp_path, True)]


def test_download_says_why_a_card_has_nothing_to_download(tmp_path):
    with pytest.raises(SegbenchError, match=r"nothing to download for data=toy; downloadable: camvid, .*voc_aug "
                                            r"\(toy data is made by hand\)"):
        download.download(toy_config(tmp_path))


def test_make_dataset_uses_the_fixture_maker_on_the_card(tmp_path, monkeypatch):
    made = []
    toy = DatasetCard(fixture=lambda root: made.append(root) or root)
    monkeypatch.setattr(fixtures, "cards", lambda: {**cards(), "toy": toy})
    assert fixtures.make_dataset("toy", tmp_path) == tmp_path / "toy" and made == [tmp_path / "toy"]
    assert "toy" in fixtures.makers() and "synthetic" not in fixtures.makers()
    with pytest.raises(SegbenchError, match="no fixture for data=synthetic"):
        fixtures.make_dataset("synthetic", tmp_path)


def test_cards_are_found_through_the_dataset_configs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy.yaml").write_text(f"name: toy\ndataset:\n  _target_: {__name__}.ToyData\n")
    assert card_module.reader_classes(tmp_path) == {"toy": ToyData}
