"""The label codec on its own, every dataset's encoding through it, and where an empty split is named."""
from __future__ import annotations

import numpy as np
import pytest

from segbench.data import fixtures
from segbench.data.camvid import CamVid
from segbench.data.cityscapes import Cityscapes
from segbench.data.codec import LabelCodec
from segbench.data.isbi import ISBI2012
from segbench.data.sunrgbd import SUNRGBD
from segbench.data.voc import VOCAugSegmentation, VOCSegmentation
from segbench.errors import DatasetNotFoundError
from tests.fixtures import datasets as fx

DATASETS = [VOCSegmentation, VOCAugSegmentation, Cityscapes, CamVid, SUNRGBD, ISBI2012]


def test_a_codec_needs_no_dataset():
    codec = LabelCodec({1: 0, 2: 1, 7: 255}, allowed_raw=[0, 1, 2, 7])
    raw = np.array([[0, 1, 2, 7, 9]], np.uint8)
    np.testing.assert_array_equal(codec.decode(raw), [[255, 0, 1, 255, 255]])
    np.testing.assert_array_equal(codec.encode([[0, 1, 255]]), [[1, 2, 0]])  # 255 → the first ignored value
    assert codec.unexpected_values(raw) == [9]
    np.testing.assert_array_equal(codec.decode(np.array([[-1, 2, 300]])), [[255, 1, 255]])  # 16-bit / int labels


@pytest.mark.parametrize("cls", DATASETS, ids=lambda c: c.__name__)
def test_every_dataset_builds_its_codec_from_class_attributes_alone(cls):
    ds = cls.__new__(cls)  # as `segbench predict` does: no files listed
    assert isinstance(ds.codec, LabelCodec) and ds.codec.lut.shape == (256,)
    train_ids = set(ds.codec.lut.tolist())
    assert set(range(len(cls.class_names))) <= train_ids <= set(range(len(cls.class_names))) | {255}


@pytest.mark.parametrize("cls", DATASETS, ids=lambda c: c.__name__)
def test_every_dataset_says_where_a_split_is_listed(cls):
    assert "split_source" in vars(cls), f"{cls.__name__} names no list file or folder for an empty split"


def test_an_empty_split_list_is_named_in_the_message(tmp_path):
    root = fx.make_camvid(tmp_path / "camvid")
    (root / "val.txt").write_text("")
    with pytest.raises(DatasetNotFoundError, match="no samples found for split 'val'") as err:
        CamVid(root, "val")
    assert str(root / "val.txt") in str(err.value)


def tree(root) -> dict[str, bytes]:
    """Every file's bytes; a .mat file's without its 116-byte text header, which holds the time
    of writing ("MATLAB 5.0 MAT-file ... Created on: <date>")."""
    return {str(p.relative_to(root)): p.read_bytes()[116 if p.suffix == ".mat" else 0:]
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(fixtures.makers()))
def test_the_tests_build_the_same_datasets_as_the_package(name, tmp_path):
    """The smoke pipeline (segbench.data.fixtures) and the tests (tests/fixtures) write the same
    files byte for byte, so a reader change the tests pass is one the smoke REPORT.md sees too."""
    assert set(fx.makers()) == set(fixtures.makers())
    ours, package = fx.make_dataset(name, tmp_path / "tests"), fixtures.make_dataset(name, tmp_path / "package")
    assert tree(ours) and tree(ours) == tree(package)
