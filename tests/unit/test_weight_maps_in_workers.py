"""U-Net's weight maps (eq. 2) are made by the DataLoader workers with each batch: the main
process, which runs (or feeds) the step, never calls scipy for them."""
import os

import numpy as np
import torch

from segbench.data.weight_map import unet_weight_map
from segbench.engine import build
from segbench.engine.distributed import World
from segbench.engine.trainer import Trainer

WEIGHT_MAP = "loss.weight_map={w0:10.0,sigma:5.0,class_balance:true,foreground:1}"


def test_the_train_loader_hands_over_each_tiles_weight_map(tiny_cfg):
    cfg = tiny_cfg(WEIGHT_MAP)
    dataset = build.build_dataset(cfg, "train", train=True)
    batch = next(iter(build.build_train_loader(cfg, dataset, World(), 0, torch.device("cpu"))))
    assert batch["weight"].shape == batch["label"].shape and batch["weight"].dtype == torch.float32
    for label, weight in zip(batch["label"], batch["weight"]):  # the map of the augmented tile itself
        np.testing.assert_array_equal(weight.numpy(), unet_weight_map(label.numpy(), 6, w0=10.0, sigma=5.0))
    assert "weight" not in next(iter(build.build_train_loader(tiny_cfg(), dataset, World(), 0, torch.device("cpu"))))


def test_training_with_weight_maps_calls_scipy_only_in_workers(tiny_cfg, tmp_path, monkeypatch):
    from scipy import ndimage

    calls, label = tmp_path / "label_calls", ndimage.label

    def spy(*args, **kwargs):  # forked workers inherit the spy and append their pid
        with open(calls, "a") as f:
            f.write(f"{os.getpid()}\n")
        return label(*args, **kwargs)

    monkeypatch.setattr(ndimage, "label", spy)
    cfg = tiny_cfg(WEIGHT_MAP, "data.num_workers=1", "trainer.max_iters=2", "trainer.val_interval=2")
    Trainer(cfg, tmp_path / "run").fit()
    pids = set(calls.read_text().split())
    assert pids and str(os.getpid()) not in pids
