"""The config schemas (segbench/engine/config.py): a wrong type or a misspelt key in a config
file or on the command line stops the composition with OmegaConf's message naming the key,
before any work; every config file still composes with its schema."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import segbench.app  # noqa: F401 - registers the schemas
from segbench.app.configs import available
from segbench.engine.config import DataConfig, TrainerConfig


@pytest.fixture
def recipe(tmp_path):
    """compose(train, experiment=<a recipe file written here>): a user's own experiment file."""
    (tmp_path / "experiment").mkdir()

    def composed(body: str):
        (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n" + body)
        GlobalHydra.instance().clear()
        try:
            with initialize_config_module(config_module="segbench.conf", version_base="1.3"):
                return compose("train", [f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"])
        finally:
            GlobalHydra.instance().clear()
    return composed


def cause(err: pytest.ExceptionInfo) -> str:
    return f"{err.value}\n{err.value.__cause__}"


def test_a_recipe_with_a_misspelt_trainer_key_is_refused(recipe):
    """Before the schema the typo was added beside max_iters and the run trained 960 iterations."""
    assert recipe("trainer:\n  max_iters: 5\n").trainer.max_iters == 5
    with pytest.raises(ConfigCompositionException) as err:
        recipe("trainer:\n  max_iter: 5\n")
    assert "Key 'max_iter' not in 'TrainerConfig'" in cause(err) and "trainer.max_iter" in cause(err)


@pytest.mark.parametrize("body, key, kind", [
    ("trainer:\n  val_interval: often\n", "trainer.val_interval", "Integer"),
    ("data:\n  batch_size: [1, 2]\n", "data.batch_size", "Integer"),
    ("optim:\n  lr: fast\n", "optim.lr", "Float"),
    ("eval_protocol:\n  flip: maybe\n", "eval_protocol.flip", "not a valid bool"),
])
def test_a_recipe_with_a_wrong_type_is_refused(recipe, body, key, kind):
    with pytest.raises(ConfigCompositionException) as err:
        recipe(body)
    assert key in cause(err) and kind in cause(err)


def test_values_take_the_schema_type():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="segbench.conf", version_base="1.3"):
        cfg = compose("train", ["trainer.grad_clip=1", "trainer.checkpoint_minutes=5"])
    GlobalHydra.instance().clear()
    assert cfg.trainer.grad_clip == 1.0 and isinstance(cfg.trainer.grad_clip, float)
    assert OmegaConf.get_type(cfg.trainer) is TrainerConfig and OmegaConf.get_type(cfg.data) is DataConfig


@pytest.mark.parametrize("data", available("data"))
def test_every_data_config_states_every_key_its_schema_leaves_open(data):
    """A schema field without a value is one the YAML must state (a default lives once)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="segbench.conf", version_base="1.3"):
        cfg = compose("train", [f"data={data}"])
    GlobalHydra.instance().clear()
    for part in ("trainer", "data", "optim", "eval_protocol"):
        missing = [k for k in cfg[part] if OmegaConf.is_missing(cfg[part], k)]
        assert not missing, f"{part}: {missing}"
