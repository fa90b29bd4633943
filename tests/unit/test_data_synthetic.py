"""The synthetic set's generation: written whole, safe when several processes start it at once,
never written over someone else's folder."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from segbench.data.synthetic import MANIFEST, SyntheticShapes
from segbench.errors import SegbenchError

SMALL = {"num_train": 6, "num_val": 2, "image_size": 16}


def test_concurrent_generation_yields_one_complete_set(tmp_path):
    root = tmp_path / "synthetic"
    with ThreadPoolExecutor(3) as pool:
        sizes = list(pool.map(lambda _: len(SyntheticShapes(root, "train", **SMALL)), range(3)))
    assert sizes == [6, 6, 6]
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temporary folder left behind
    assert json.loads((root / MANIFEST).read_text()) == {**SMALL, "seed": 0}


def test_an_empty_folder_is_filled_and_a_foreign_one_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(SyntheticShapes(tmp_path / "empty", "val", **SMALL)) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SegbenchError, match=f"no {MANIFEST}"):
        SyntheticShapes(tmp_path / "mine", "train", **SMALL)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_set_generated_with_other_settings_is_refused(tmp_path):
    SyntheticShapes(tmp_path / "s", "train", **SMALL)
    with pytest.raises(SegbenchError, match="delete"):
        SyntheticShapes(tmp_path / "s", "train", **{**SMALL, "num_train": 7})
