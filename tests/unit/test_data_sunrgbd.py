"""SUN RGB-D: label 0 → 255, k → k-1, the train ↔ label+5050 pairing, depth, and the converter
from the official toolbox files (HDF5 SUNRGBD2Dseg.mat + allsplit.mat + SUNRGBDMeta.mat)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import segbench
from segbench.data.conversion import is_prepared
from segbench.data.prepare_sunrgbd import prepare_sunrgbd
from segbench.data.sunrgbd import SUNRGBD
from segbench.data.transforms import train_pipeline
from segbench.errors import DatasetNotFoundError
from tests.fixtures import datasets as fx

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fx.make_sunrgbd(tmp_path_factory.mktemp("sun") / "sunrgbd")


def test_labels_decode_and_train_images_pair_with_label_plus_5050(root):
    ds = segbench.build_dataset("sunrgbd", root, "train")
    assert ds.num_classes == 37 and ds.class_names[0] == "wall" and ds.class_names[36] == "bag"
    for i, (image, label) in enumerate(ds.samples):
        k = int(image.stem.split("-")[1])
        assert label.name == f"img-{k + 5050:06d}.png"
        raw = np.array(Image.open(label))
        assert 0 in raw and 37 in raw
        expected = np.where(raw == 0, 255, raw.astype(np.int16) - 1).astype(np.uint8)
        np.testing.assert_array_equal(ds.load(i)[1], expected)
    test = SUNRGBD(root, "test")
    assert [lab.name for _, lab in test.samples] == ["img-000001.png", "img-000002.png"]


def test_train_images_already_renamed_to_5051_are_recognised(tmp_path):
    root = fx.make_sunrgbd(tmp_path / "sun", depth=False)
    folder = root / "SUNRGBD-train_images"
    for path in sorted(folder.glob("*.jpg"), reverse=True):
        k = int(path.stem.split("-")[1])
        path.rename(folder / f"img-{k + 5050:06d}.jpg")
    ds = SUNRGBD(root, "train")
    img, lab = ds.samples[0]
    assert (img.stem, lab.stem) == ("img-005051", "img-005051")


def test_depth_modality_adds_aligned_metres(root):
    plain = SUNRGBD(root, "train", modalities=["rgb", "depth"])
    item = plain[0]
    assert item["image"].shape[0] == 3 and item["depth"].shape == (1, *item["label"].shape)
    raw = np.array(Image.open(plain.depth_paths[0]))
    np.testing.assert_allclose(item["depth"][0].numpy(), raw / 10000.0, rtol=1e-6)
    assert item["depth"][0, 0, 0] == 0  # a missing measurement stays 0
    # Through a padding pipeline: depth moves with the label, padding becomes 0 (not 255).
    aug = SUNRGBD(root, "train", modalities="rgbd",
                  transform=train_pipeline(crop_size=[40, 40], scale_range=None, hflip=False))
    out = aug[0]
    depth, label = out["depth"][0].numpy(), out["label"].numpy()
    assert depth.shape == label.shape == (40, 40)
    h, w = raw.shape
    top, left = (40 - h) // 2, (40 - w) // 2  # PadIfNeeded centres the image
    np.testing.assert_allclose(depth[top: top + h, left: left + w], raw / 10000.0, rtol=1e-6)
    np.testing.assert_array_equal(label[top: top + h, left: left + w], plain.load(0)[1])
    assert (depth[:top] == 0).all() and (label[:top] == 255).all()


def test_missing_depth_is_named(tmp_path):
    root = fx.make_sunrgbd(tmp_path / "sun", depth=False)
    with pytest.raises(DatasetNotFoundError, match="sunrgbd_train_depth"):
        SUNRGBD(root, "train", modalities=["rgb", "depth"])


def test_official_tree_without_prepare_says_what_to_run(tmp_path):
    root = fx.make_sunrgbd_official(tmp_path / "sun")
    with pytest.raises(DatasetNotFoundError, match="segbench data prepare data=sunrgbd"):
        SUNRGBD(root, "train")


def test_converter_builds_the_release_layout_from_the_toolbox(tmp_path):
    root = fx.make_sunrgbd_official(tmp_path / "sun")
    counts = prepare_sunrgbd(root, depth=True)
    assert counts == {"train": fx.SUN_TRAIN, "test": fx.SUN_TEST}
    assert is_prepared(root, "sunrgbd")
    with h5py.File(root / "SUNRGBDtoolbox/Metadata/SUNRGBD2Dseg.mat") as f:
        refs = np.asarray(f["SUNRGBD2Dseg"]["seglabel"]).ravel()
        labels = [np.asarray(f[r]).T.astype(np.uint8) for r in refs]
    test_frames = list(fx.SUN_OFFICIAL_TEST_FRAMES)
    frames = {"test": test_frames, "train": [i for i in range(len(labels)) if i not in test_frames]}
    for split in ("train", "test"):
        ds = SUNRGBD(root, split, modalities=["rgb", "depth"])
        assert len(ds) == len(frames[split])
        for j, i in enumerate(frames[split]):
            expected = np.where(labels[i] == 0, 255, labels[i].astype(np.int16) - 1)
            np.testing.assert_array_equal(ds.load(j)[1], expected)
            assert ds[j]["depth"].min() > 0.49 and ds[j]["depth"].max() < 6.01
    assert prepare_sunrgbd(root) is None  # idempotent


def test_convert_script_runs_standalone(tmp_path):
    spec = importlib.util.spec_from_file_location("convert_sunrgbd", REPO / "scripts" / "convert_sunrgbd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = fx.make_sunrgbd_official(tmp_path / "sun")
    out = tmp_path / "out"
    assert module.main([str(root / "SUNRGBD"), str(root / "SUNRGBDtoolbox"), str(out)]) == 0
    assert len(SUNRGBD(out, "train")) == fx.SUN_TRAIN and len(SUNRGBD(out, "test")) == fx.SUN_TEST
