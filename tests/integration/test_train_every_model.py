"""Every network trains a few iterations through the real trainer on the synthetic set.

`segbench train model=<name> data=synthetic` with a small input and, where the model has a
width knob, a narrow width; ResNet models use ResNet-50 (same code path as ResNet-101).
"""
import math

import pytest

from segbench.api import available
from segbench.engine.trainer import Trainer
from segbench.record import RunRecord
from tests.conftest import TINY_SYNTHETIC, compose_train

SMALL = {
    "unet": ["model.base_channels=4", "model.padding=same"],
    "unet_small": ["model.base_channels=4"],
    "fcn32s": ["model.base_channels=8"],
    "fcn16s": ["model.base_channels=8"],
    "fcn8s": ["model.base_channels=8"],
    "segnet": ["model.base_channels=8"],
    "segnet_basic": ["model.base_channels=8"],
    "deeplabv1": ["model.base_channels=8", "model.fc_channels=32"],
    "deeplabv2": ["model.backbone=resnet50"],
    "deeplabv3": ["model.backbone=resnet50"],
    "deeplabv3plus": ["model.backbone=resnet50"],
    "pspnet": ["model.backbone=resnet50"],
}


def test_every_model_config_is_covered():
    assert set(available("model")) == set(SMALL), "add the new model to SMALL"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_trains_on_synthetic(name, synthetic_root, tmp_path):
    base = [o for o in TINY_SYNTHETIC if not o.startswith("model.")]
    cfg = compose_train([f"model={name}", *base, *SMALL[name], f"data.root={synthetic_root}",
                         "data.batch_size=2", "data.val_batch_size=4",
                         "trainer.max_iters=2", "trainer.val_interval=2", "trainer.log_interval=1"])
    validation = Trainer(cfg, tmp_path).fit()
    assert validation.iteration == 2 and not math.isnan(validation.scores["aAcc"])
    assert (tmp_path / "last.pt").is_file() and RunRecord.load(tmp_path).status == "finished"
