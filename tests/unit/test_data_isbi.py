"""ISBI 2012: multi-page TIFF stacks, membrane 0 / cell 1, slice splits, the PNG copy."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

import segbench
from segbench.data.isbi import ISBI2012
from segbench.errors import CorruptFileError
from tests.fixtures import datasets as fx


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fx.make_isbi(tmp_path_factory.mktemp("isbi") / "isbi")


def test_stacks_are_multi_page_and_labels_decode_to_membrane_and_cell(root):
    with tifffile.TiffFile(root / "train-labels.tif") as tif:
        assert len(tif.pages) == fx.ISBI_SLICES
    labels = tifffile.imread(root / "train-labels.tif")
    assert set(np.unique(labels)) == {0, 255}
    ds = segbench.build_dataset("isbi", root, "trainval")
    assert ds.class_names == ("membrane", "cell") and len(ds) == 30
    for i in range(len(ds)):
        image, label = ds.load(i)
        np.testing.assert_array_equal(label, (labels[i] == 255).astype(np.uint8))  # 255 = cell = 1
        assert image.shape == (fx.ISBI_SIZE, fx.ISBI_SIZE, 3)
        assert (image[..., 0] == image[..., 2]).all()  # grey repeated to 3 channels


def test_slice_splits_are_configurable(root):
    assert [ISBI2012(root, "val").slices] == [[27, 28, 29]]
    assert ISBI2012(root, "train").slices == list(range(27))
    custom = segbench.build_dataset("isbi", root, "val", val_slices=[0, 5])
    assert custom.slices == [0, 5] and len(segbench.build_dataset("isbi", root, "train", val_slices=[0, 5])) == 28
    volume = tifffile.imread(root / "train-volume.tif")
    np.testing.assert_array_equal(custom.load(1)[0][..., 0], volume[5])


def test_test_volume_has_no_labels(root):
    ds = ISBI2012(root, "test")
    assert len(ds) == 30 and ds.load(0)[1] is None
    assert (ds[0]["label"] == 255).all()


def test_grey_values_between_are_thresholded_and_encode_inverts(root):
    ds = ISBI2012(root, "val")
    np.testing.assert_array_equal(ds.decode(np.array([[0, 127, 128, 255]], np.uint8)), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(ds.encode_label(np.array([[0, 1]])), [[0, 255]])
    assert ds.unexpected_values(np.array([[0, 200, 255]], np.uint8)) == [200]
    assert not ds.strict_values  # `data check` warns about them instead of failing


def test_png_copy_of_zhixuhao_unet(tmp_path):
    root = fx.make_isbi_png(tmp_path / "membrane")
    ds = ISBI2012(root, "val")
    assert [ds.sample_id(i) for i in range(len(ds))] == ["27", "28", "29"]
    _, labels = fx.isbi_stacks()
    np.testing.assert_array_equal(ds.load(0)[1], (labels[27] == 255).astype(np.uint8))
    assert len(ISBI2012(root, "test")) == 30


def test_corrupt_tiff_names_the_file(tmp_path):
    root = fx.make_isbi(tmp_path / "isbi", test=False)
    (root / "train-volume.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(CorruptFileError, match="train-volume.tif"):
        ISBI2012(root, "train")
