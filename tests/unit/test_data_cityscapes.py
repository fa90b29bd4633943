"""Cityscapes: label ids → train ids for every id, labelTrainIds, fine / coarse / fine+coarse
selection, the reverse mapping for the official evaluator, and `prepare`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import segbench
from segbench.data import prepare_cityscapes
from segbench.data.cityscapes import Cityscapes, trainid_to_id
from segbench.data.conversion import is_prepared, marker_path
from segbench.errors import DatasetNotFoundError
from tests.fixtures import datasets as fx

# cityscapesScripts helpers/labels.py: id -> trainId of the 19 evaluated classes; all else 255.
DOCUMENTED = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
              25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IGNORED_IDS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fx.make_cityscapes(tmp_path_factory.mktemp("cs") / "cityscapes")


def _expected(raw):
    out = np.full(raw.shape, 255, np.uint8)
    for lid, tid in DOCUMENTED.items():
        out[raw == lid] = tid
    return out


def test_every_label_id_decodes_as_documented(root):
    ds = segbench.build_dataset("cityscapes", root, "train")
    assert ds.num_classes == 19 and ds.class_names[0] == "road" and ds.class_names[-1] == "bicycle"
    for i, (_, label_path) in enumerate(ds.samples):
        assert label_path.name.endswith("_gtFine_labelIds.png")
        raw = np.array(Image.open(label_path))
        assert set(np.unique(raw)) == set(range(34))  # every id, so every id that maps to 255
        np.testing.assert_array_equal(ds.load(i)[1], _expected(raw))
    assert sorted(set(range(34)) - set(DOCUMENTED)) == IGNORED_IDS


def test_test_split_dummy_labels_are_all_ignore(root):
    ds = Cityscapes(root, "test")
    assert (ds.load(0)[1] == 255).all()


def test_reverse_mapping_and_prediction_encoding(root, tmp_path):
    train_ids = np.arange(19, dtype=np.uint8)
    ids = trainid_to_id(train_ids)
    assert dict(zip(ids.tolist(), train_ids.tolist())) == DOCUMENTED
    ds = Cityscapes(root, "val")
    pred = np.array([[0, 13, 18], [5, 10, 255]])
    np.testing.assert_array_equal(ds.encode_prediction(pred), [[7, 26, 33], [17, 23, 0]])
    np.testing.assert_array_equal(ds.decode(ds.encode_prediction(pred)), [[0, 13, 18], [5, 10, 255]])
    path = ds.save_prediction(pred, tmp_path / ds.prediction_filename(0))
    assert path.name == "frankfurt_000000_000019_leftImg8bit.png"
    img = Image.open(path)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.array(img), [[7, 26, 33], [17, 23, 0]])


def test_license_plate_minus_one_is_never_a_stored_value(root, tmp_path):
    # json2labelImg never draws id -1; a file holding 255 (= -1 as uint8) is not a labelIds file.
    ds = Cityscapes(root, "val")
    assert ds.unexpected_values(np.array([[26, 255]], np.uint8)) == [255]
    assert ds.decode(np.array([[26, 255]], np.uint8)).tolist() == [[13, 255]]


def test_fine_coarse_and_fine_plus_coarse_selection(root):
    fine = Cityscapes(root, "train")
    coarse = Cityscapes(root, "train", annotations="coarse")
    both = Cityscapes(root, "train", annotations="fine+coarse")
    assert len(fine) == 2 and len(coarse) == 2 and len(both) == 4
    assert all("/gtFine/train/" in str(lab) for _, lab in fine.samples)
    assert all("/gtCoarse/train/" in str(lab) for _, lab in coarse.samples)
    assert [lab.parent.parent.parent.name + "/" + lab.parent.parent.name for _, lab in both.samples] == [
        "gtFine/train", "gtFine/train", "gtCoarse/train_extra", "gtCoarse/train_extra"]
    assert all("/leftImg8bit/train_extra/" in str(img) for img, _ in both.samples[2:])
    assert both.expected_counts["train"] == 2975 + 19998
    assert len(Cityscapes(root, "val", annotations="fine+coarse")) == 1  # val stays fine only
    extra = Cityscapes(root, "train_extra")
    assert len(extra) == 2 and all("gtCoarse" in str(lab) for _, lab in extra.samples)


def test_label_train_ids_are_used_when_present(tmp_path):
    root = fx.make_cityscapes(tmp_path / "cs", coarse=False)
    ds = Cityscapes(root, "val")
    ids_path = ds.samples[0][1]
    trainids = np.full(fx.CITYSCAPES_SIZE, 4, np.uint8)
    trainids[0, 0] = 255
    Image.fromarray(trainids).save(str(ids_path).replace("_labelIds", "_labelTrainIds"))
    auto = Cityscapes(root, "val")
    assert auto.samples[0][1].name.endswith("_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(auto.load(0)[1], trainids)
    forced = Cityscapes(root, "val", label_type="labelIds")
    np.testing.assert_array_equal(forced.load(0)[1], _expected(np.array(Image.open(ids_path))))


def test_gtfine_without_leftimg8bit_says_so(tmp_path):
    (tmp_path / "cs" / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as err:
        Cityscapes(tmp_path / "cs", "train")
    msg = str(err.value)
    assert "leftImg8bit" in msg and "gtFine" in msg and "leftImg8bit_trainvaltest.zip" in msg
    assert "cityscapes-dataset.com" in msg


def test_prepare_writes_train_ids_once_and_redoes_without_marker(tmp_path, monkeypatch):
    root = fx.make_cityscapes(tmp_path / "cs")
    calls = {"n": 0}
    real = prepare_cityscapes.write_png

    def crash(array, path, palette=None):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        return real(array, path, palette)

    monkeypatch.setattr(prepare_cityscapes, "write_png", crash)
    with pytest.raises(OSError):
        prepare_cityscapes.prepare_cityscapes(root)
    assert not is_prepared(root, "cityscapes")
    assert not list(root.rglob(".*.tmp-*"))  # no half-written file under a final name either
    monkeypatch.setattr(prepare_cityscapes, "write_png", real)

    prepare_cityscapes.prepare_cityscapes(root)
    assert is_prepared(root, "cityscapes")
    sources = sorted(root.rglob("*_labelIds.png"))
    assert len(sources) == 9
    for src in sources:
        out = src.with_name(src.name.replace("_labelIds", "_labelTrainIds"))
        np.testing.assert_array_equal(np.array(Image.open(out)), _expected(np.array(Image.open(src))))
    out = sources[0].with_name(sources[0].name.replace("_labelIds", "_labelTrainIds"))
    stamp = out.stat().st_mtime_ns
    assert prepare_cityscapes.prepare_cityscapes(root) is None  # marker present: nothing redone
    assert out.stat().st_mtime_ns == stamp
    marker_path(root, "cityscapes").unlink()
    out.write_bytes(b"half")
    prepare_cityscapes.prepare_cityscapes(root)
    np.testing.assert_array_equal(np.array(Image.open(out)), _expected(np.array(Image.open(sources[0]))))
