"""Model cards: every conf/model/<name>.yaml carries its small variant (its ``smoke:`` block),
which ``smoke=true`` runs and the model tests build, and which never reaches the constructor."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import segbench
from segbench.app import configs
from segbench.app.smoke import small_model, small_variant, smoke_config
from segbench.engine import build
from tests.conftest import compose_train

MODELS = configs.available("model")


def parameters(name: str, **overrides) -> int:
    with torch.device("meta"):  # paper widths cost nothing here
        return sum(p.numel() for p in segbench.build_model(name, 5, **overrides).parameters())


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_has_a_smoke_block_that_builds_a_small_model(name):
    model = configs.group("model", name)
    assert "smoke" in model, f"conf/model/{name}.yaml: add `smoke: {{...}}`, its small variant"
    small = small_model(name)
    assert set(model.smoke) <= set(model) - {"smoke"}, "the block sets the model's own keys"
    paper = parameters(name)
    if small:
        assert parameters(name, **small) < paper
    else:  # a default with no smaller variant (Xception-65): the block shrinks other choices
        assert model.smoke, f"{name}: an empty smoke block shrinks nothing"


def test_a_mapping_in_the_block_shrinks_only_the_values_it_lists():
    block = {"smoke": {"backbone": {"resnet101": "resnet50"}, "base_channels": 4}}
    assert small_variant({"backbone": "resnet101", "base_channels": 64, **block}) == {"backbone": "resnet50",
                                                                                    "base_channels": 4}
    assert small_variant({"backbone": "xception65", "base_channels": 64, **block}) == {"base_channels": 4}
    assert small_variant({"backbone": "resnet101"}) == {}


def test_smoke_runs_read_the_models_block():
    cfg = smoke_config(compose_train(["experiment=segnet_basic_camvid", "model.smoke={base_channels: 7}"]))
    assert cfg.model.base_channels == 7
    assert smoke_config(compose_train(["experiment=pspnet_r101_voc_aug"])).model.backbone == "resnet50"
    assert smoke_config(compose_train(["experiment=deeplabv3plus_xception65_voc_aug"])).model.backbone == "xception65"
    assert smoke_config(compose_train(["experiment=deeplabv2_vgg16_voc_aug"])).model.backbone == "vgg16"


def test_the_block_never_reaches_the_constructor():
    cfg = compose_train(["model=deeplabv1", "data=synthetic"])
    assert "smoke" in cfg.model and "smoke" not in build.constructor_config(cfg.model)
    assert OmegaConf.select(cfg, "model.base_channels") == 64  # the recipe is untouched: smoke=true applies it
    assert isinstance(segbench.build_model("deeplabv1", 3, **small_model("deeplabv1")), torch.nn.Module)
