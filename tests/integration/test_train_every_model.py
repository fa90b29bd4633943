"""Every network family trains a few iterations through the real trainer on the synthetic set.

`segbench train model=<name> data=synthetic` with a small input, as the model's small variant
(the ``smoke:`` block of its config: a narrow width where the model has a width knob), so a new
model config trains here without an edit. The ResNet family runs once, as PSPNet (ResNet-50,
same code path as ResNet-101): its trunk has no width knob, so each of its runs trained a
paper-width network, and DeepLab v2/v3/v3+ take the trainer's path of PSPNet minus the
auxiliary head (one "out" map, the same ResNet trunk code). Their networks learn a batch in
tests/unit/test_models_resnet_family.py, their recipes build their model and data in
tests/unit/test_experiments.py and their loss terms (MSC) are checked in
tests/unit/test_recipes_fidelity.py.
"""
import math

import pytest

from segbench.api import available
from segbench.app.smoke import small_model
from segbench.engine.trainer import Trainer
from segbench.record import RunRecord
from tests.conftest import TINY_SYNTHETIC, compose_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny inputs: a second thread only spins
#: Models whose trainer run is their family's: the same trunk code and output dict as the model named.
SAME_RUN_AS = {"deeplabv2": "pspnet", "deeplabv3": "pspnet", "deeplabv3plus": "pspnet"}
#: Test-only settings on top of a model's small variant: U-Net's valid convolutions need more than 32 px.
EXTRA = {"unet": ["model.padding=same"]}
TRAINED = sorted(set(available("model")) - set(SAME_RUN_AS))


def small_overrides(name: str) -> list[str]:
    """The model's small variant (the ``smoke:`` block of its config) as overrides."""
    return [f"model.{key}={value}" for key, value in small_model(name).items()] + EXTRA.get(name, [])


def test_every_model_config_is_covered():
    assert set(SAME_RUN_AS.values()) <= set(TRAINED) and set(SAME_RUN_AS) <= set(available("model"))


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_model_trains_on_synthetic(name, synthetic_root, tmp_path):
    base = [o for o in TINY_SYNTHETIC if not o.startswith("model.")]
    cfg = compose_train([f"model={name}", *base, *small_overrides(name), f"data.root={synthetic_root}",
                         "data.batch_size=2", "data.val_batch_size=4",
                         "trainer.max_iters=2", "trainer.val_interval=2", "trainer.log_interval=1"])
    validation = Trainer(cfg, tmp_path).fit()
    assert validation.iteration == 2 and not math.isnan(validation.scores["aAcc"])
    assert (tmp_path / "last.pt").is_file() and RunRecord.load(tmp_path).status == "finished"
