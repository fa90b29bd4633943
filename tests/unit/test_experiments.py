"""Every paper recipe in conf/experiment composes, states its paper numbers, and builds its model
and datasets (on the fixtures' tiny copies of the real layouts)."""
import math

import pytest
import torch

from segbench.api import available
from segbench.app.smoke import smoke_config
from segbench.data.normalization import Normalization
from segbench.engine import build
from segbench.engine.inference import check_protocol
from segbench.engine.protocol import Protocol
from tests.conftest import compose_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # paper-width ResNets on 32 px crops
EXPERIMENTS = available("experiment")
REQUIRED = {
    "fcn32s_vgg16_voc", "fcn16s_vgg16_voc", "fcn8s_vgg16_voc", "unet_isbi", "segnet_vgg16_camvid",
    "segnet_vgg16_sunrgbd", "pspnet_r101_voc_aug", "pspnet_r101_cityscapes", "deeplabv1_vgg16_voc_aug",
    "deeplabv1_vgg16_voc_aug_crf", "deeplabv2_vgg16_voc_aug", "deeplabv2_r101_voc_aug", "deeplabv3_r101_voc_aug",
    "deeplabv3_r101_cityscapes", "deeplabv3plus_r101_voc_aug", "deeplabv3plus_xception65_voc_aug",
    "deeplabv3plus_r101_cityscapes", "deeplabv3plus_xception65_cityscapes",
}
PAPER_KEYS = {"experiment", "title", "metric", "value", "split", "extra_data", "protocol", "source", "deviations"}


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory):
    from tests.fixtures.datasets import make_dataset

    root = tmp_path_factory.mktemp("fixture_data")
    for name in ("voc_aug", "cityscapes", "camvid", "sunrgbd", "isbi"):
        make_dataset(name, root)
    return root


def test_every_paper_result_has_an_experiment():
    assert REQUIRED <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_its_paper_block(name):
    cfg = compose_train([f"experiment={name}"])
    paper = cfg.paper
    assert PAPER_KEYS <= set(paper), f"{name}: paper block lacks {PAPER_KEYS - set(paper)}"
    assert paper.experiment == name
    assert paper.value is not None or paper.get("comparable"), "a row needs a paper or a comparable number"
    if paper.value is not None:
        assert isinstance(paper.value, float) and not math.isnan(paper.value)
    assert all(isinstance(d, str) for d in paper.deviations) and all(isinstance(u, str) for u in paper.get("unstated", []))
    for key in ("comparable", "headline"):
        if paper.get(key):
            assert paper[key].value is not None and paper[key].source
    if "COCO" in str(paper.extra_data) or "corpus" in str(paper.extra_data):
        assert paper.get("comparable"), f"{name}: the paper used extra data; give a comparable row"
    assert cfg.model.pretrained is (name not in ("unet_isbi", "segnet_basic_camvid"))  # these train from scratch
    assert cfg.trainer.val_interval <= cfg.trainer.max_iters
    # A kill loses at most one checkpoint interval, not the run (validation may come only at the end).
    assert cfg.trainer.checkpoint_interval and cfg.trainer.checkpoint_interval < cfg.trainer.max_iters, name
    assert cfg.trainer.checkpoint_minutes and cfg.trainer.checkpoint_minutes <= 30
    Protocol.from_config(cfg.eval_protocol)  # a valid protocol


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_builds_model_and_data_on_the_fixtures(name, fixture_data, monkeypatch):
    monkeypatch.setenv("SEGBENCH_DATA", str(fixture_data))
    torch.manual_seed(0)
    recipe = compose_train([f"experiment={name}"])
    cfg = smoke_config(compose_train([f"experiment={name}"]))
    # the smoke run shrinks the recipe but tests the same network, data and loss
    assert cfg.model._target_ == recipe.model._target_ and cfg.data.name == recipe.data.name
    assert cfg.loss == recipe.loss and cfg.eval_protocol.get("postprocess") == recipe.eval_protocol.get("postprocess")
    train_set = build.build_dataset(cfg, cfg.data.train_split, train=True)
    val_set = build.build_dataset(cfg, cfg.data.val_split, train=False)
    sample = train_set[0]
    side = 32 + 2 * (cfg.data.transforms.train.get("context") or 0)  # U-Net tiles carry their context
    assert sample["image"].shape == (3, side, side) and sample["label"].shape == (side, side)
    assert len(val_set) > 0
    model = build.build_model(cfg).eval()
    check_protocol(model, cfg.eval_protocol)  # its sliding windows fit the network's output stride
    with torch.no_grad():
        out = model(Normalization.from_data_config(cfg.data)(sample["image"][None]))["out"]
    assert out.shape == (1, cfg.data.num_classes, side, side)
