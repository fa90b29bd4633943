"""PASCAL VOC 2012 and the SBD trainaug set: decoding, the trainaug union and its exclusion of
VOC val, the SegmentationClassAug route, and `prepare` (idempotent, atomic)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

import segbench
from segbench.data import prepare_voc
from segbench.data.base import voc_colormap
from segbench.data.conversion import is_prepared, marker_path
from segbench.data.voc import VOCAugSegmentation, VOCSegmentation
from segbench.errors import DatasetNotFoundError
from tests.fixtures import datasets as fx


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return fx.make_voc_aug_sbd(tmp_path_factory.mktemp("voc") / "voc")


def _voc2012(root):
    return root / "VOCdevkit" / "VOC2012"


def test_voc_labels_are_palette_indices_pixel_by_pixel(voc_root):
    ds = segbench.build_dataset("voc", voc_root, "train")
    assert [ds.sample_id(i) for i in range(len(ds))] == list(fx.VOC_TRAIN)
    for i in range(len(ds)):
        png = Image.open(ds.samples[i][1])
        assert png.mode == "P"  # the real encoding: indices, with the VOC colour map
        raw = np.array(png)
        assert 255 in raw  # the void band
        np.testing.assert_array_equal(ds.load(i)[1], raw)  # VOC: index = train id, 255 = ignore


def test_voc_values_outside_the_classes_decode_to_ignore(voc_root):
    ds = VOCSegmentation(voc_root, "val")
    raw = np.array([[0, 20, 21, 254, 255]], np.uint8)
    np.testing.assert_array_equal(ds.decode(raw), [[0, 20, 255, 255, 255]])
    assert ds.unexpected_values(raw) == [21, 254]


def test_voc_save_prediction_writes_an_indexed_png_with_the_voc_palette(voc_root, tmp_path):
    ds = VOCSegmentation(voc_root, "val")
    pred = np.array([[0, 1], [15, 20]], np.int64)
    path = ds.save_prediction(pred, tmp_path / "p.png")
    img = Image.open(path)
    assert img.mode == "P"
    np.testing.assert_array_equal(np.array(img), pred)
    np.testing.assert_array_equal(np.array(img.getpalette()[:63]).reshape(21, 3), voc_colormap()[:21])


def test_trainaug_is_the_union_minus_voc_val(voc_root):
    ds = segbench.build_dataset("voc_aug", voc_root, "train")
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert ids == fx.voc_aug_expected_train()
    # SBD train holds a VOC val image (as the real one does); it must not leak into training.
    assert set(fx.VOC_VAL) & set(fx.SBD_TRAIN)
    assert not set(ids) & set(fx.VOC_VAL)
    assert ds.excluded_val == sorted(set(fx.VOC_VAL) & set(fx.SBD_TRAIN + fx.SBD_VAL))


def test_trainaug_label_sources_and_mat_decoding(voc_root):
    ds = VOCAugSegmentation(voc_root, "train")
    base = _voc2012(voc_root)
    for i, (image, label) in enumerate(ds.samples):
        sid = ds.sample_id(i)
        assert image == base / "JPEGImages" / f"{sid}.jpg"
        if sid in fx.VOC_TRAIN:  # the finer VOC annotation wins
            assert label == base / "SegmentationClass" / f"{sid}.png"
        else:
            assert label == voc_root / "benchmark_RELEASE" / "dataset" / "cls" / f"{sid}.mat"
            seg = scipy.io.loadmat(label)["GTcls"][0]["Segmentation"][0]
            decoded = ds.load(i)[1]
            np.testing.assert_array_equal(decoded, seg)  # SBD: class ids 0..20 as stored
            assert decoded.max() <= 20  # no 255 band in SBD


def test_voc_aug_val_is_voc_val_with_original_labels(voc_root):
    ds = VOCAugSegmentation(voc_root, "val")
    assert [ds.sample_id(i) for i in range(len(ds))] == list(fx.VOC_VAL)
    assert all(label.parent.name == "SegmentationClass" for _, label in ds.samples)


def test_segmentationclassaug_route_drops_val_ids_from_a_contaminated_list(tmp_path):
    root = fx.make_voc_aug_png(tmp_path / "voc", with_val_in_list=True)
    with pytest.warns(UserWarning, match="VOC val"):
        ds = VOCAugSegmentation(root, "train", labels="png")
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert fx.VOC_VAL[0] not in ids
    assert sorted(ids) == fx.voc_aug_expected_train()
    for i, (_, label) in enumerate(ds.samples):
        if ds.sample_id(i) not in fx.VOC_TRAIN:
            assert label.parent.name == "SegmentationClassAug"
            np.testing.assert_array_equal(ds.load(i)[1], np.array(Image.open(label)))


def test_voc_aug_without_sbd_names_where_to_get_it(tmp_path):
    root = fx.make_voc(tmp_path / "voc")
    with pytest.raises(DatasetNotFoundError) as err:
        VOCAugSegmentation(root, "train")
    assert "benchmark_RELEASE" in str(err.value) and "benchmark.tgz" in str(err.value)


def test_prepare_voc_aug_converts_once_and_lists_trainaug(tmp_path):
    root = fx.make_voc_aug_sbd(tmp_path / "voc")
    prepare_voc.prepare_voc_aug(root)
    base = _voc2012(root)
    aug = base / "SegmentationClassAug"
    assert is_prepared(root, "voc_aug")
    assert (base / "ImageSets/Segmentation/trainaug.txt").read_text().split() == fx.voc_aug_expected_train()
    assert (base / "ImageSets/Segmentation/aug.txt").read_text().split() == sorted(fx.SBD_ONLY)
    for mat in (root / "benchmark_RELEASE/dataset/cls").glob("*.mat"):
        png = Image.open(aug / f"{mat.stem}.png")
        assert png.mode == "L"
        np.testing.assert_array_equal(np.array(png), scipy.io.loadmat(mat)["GTcls"][0]["Segmentation"][0])
    # The dataset now reads the PNGs and the list, with the same ids.
    ds = VOCAugSegmentation(root, "train")
    assert [ds.sample_id(i) for i in range(len(ds))] == fx.voc_aug_expected_train()
    assert {p.suffix for _, p in ds.samples} == {".png"}
    # Idempotent: a second run finds the marker and touches nothing.
    stamp = (aug / "2008_000002.png").stat().st_mtime_ns
    assert prepare_voc.prepare_voc_aug(root) is None
    assert (aug / "2008_000002.png").stat().st_mtime_ns == stamp


def test_interrupted_prepare_is_never_taken_for_finished(tmp_path, monkeypatch):
    root = fx.make_voc_aug_sbd(tmp_path / "voc")
    aug = _voc2012(root) / "SegmentationClassAug"
    calls = {"n": 0}
    real = prepare_voc.read_sbd_mat

    def crash_after_two(path):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # the user hits Ctrl-C mid-conversion
        return real(path)

    monkeypatch.setattr(prepare_voc, "read_sbd_mat", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_voc.prepare_voc_aug(root)
    assert not is_prepared(root, "voc_aug")
    assert not aug.exists()  # the half-built folder never got the final name
    assert not [p for p in aug.parent.iterdir() if p.name.startswith(".SegmentationClassAug")]
    ds = VOCAugSegmentation(root, "train")  # still reads SBD directly, not a partial folder
    assert {p.suffix for _, p in ds.samples} == {".png", ".mat"}

    monkeypatch.setattr(prepare_voc, "read_sbd_mat", real)
    prepare_voc.prepare_voc_aug(root)
    assert is_prepared(root, "voc_aug") and len(list(aug.glob("*.png"))) == 6

    # No marker (a run killed after the rename): the next prepare redoes it from scratch.
    marker_path(root, "voc_aug").unlink()
    (aug / "2008_000002.png").write_bytes(b"garbage")
    prepare_voc.prepare_voc_aug(root)
    assert is_prepared(root, "voc_aug")
    assert np.array(Image.open(aug / "2008_000002.png")).shape == fx.VOC_SIZE


def test_prepare_leaves_a_users_own_segmentationclassaug_alone(tmp_path):
    root = fx.make_voc_aug_png(tmp_path / "voc", with_val_in_list=False)
    fx.make_voc_aug_sbd(root)  # SBD next to it as well
    aug = _voc2012(root) / "SegmentationClassAug"
    before = {p.name: p.stat().st_mtime_ns for p in aug.iterdir()}
    prepare_voc.prepare_voc_aug(root)
    assert {p.name: p.stat().st_mtime_ns for p in aug.iterdir()} == before
    assert os.path.exists(_voc2012(root) / "ImageSets/Segmentation/trainaug.txt")
