"""A checkpoint carries every random generator a step draws from, and a resume restores them;
cudnn.benchmark follows the input shapes during validation and is restored after.

CPU only: the CUDA generator is checked through recorders in place of ``torch.cuda``'s calls
(the GPU run itself: docs/multi-gpu.md says what was checked where)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from segbench.engine import checkpoint
from segbench.engine.checkpoint import load_checkpoint
from segbench.engine.device import ShapeFollowingBenchmark
from segbench.engine.trainer import Trainer

CPU = torch.device("cpu")


def draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), np.random.rand()


def test_rng_state_survives_a_checkpoint_file_and_restores_every_generator(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    draws()
    path = tmp_path / "state.pt"
    checkpoint.save_checkpoint(path, {"model": {}, "rng": checkpoint.rng_state(CPU)})
    expected = draws()
    draws()  # move every generator on
    state = load_checkpoint(path)  # as data only (weights_only): no numpy array inside
    checkpoint.restore_rng(state["rng"], CPU)
    assert draws() == expected
    assert "cuda" not in state["rng"]


def test_an_old_checkpoint_with_the_cpu_generator_only_still_resumes():
    saved = torch.get_rng_state()
    expected = torch.rand(2)
    checkpoint.restore_rng({"torch": saved}, CPU)
    assert torch.equal(torch.rand(2), expected)


def test_the_cuda_generator_of_the_training_gpu_is_saved_and_restored(monkeypatch):
    gpu, seen = torch.device("cuda", 1), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: seen.append(("get", str(device)))
                        or torch.tensor([7, 8], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: seen.append(("set", str(device),
                                                                                       state.tolist())))
    state = checkpoint.rng_state(gpu)
    checkpoint.restore_rng(state, gpu)
    checkpoint.restore_rng(state, CPU)  # a GPU run resumed on the CPU: nothing to set there
    assert seen == [("get", "cuda:1"), ("set", "cuda:1", [7, 8])]


class ShapeSpy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.backends.cudnn.benchmark)
        return x


@pytest.mark.parametrize("before", [True, False])
def test_benchmark_stays_on_for_one_shape_goes_off_at_the_second_and_is_restored(before, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
    model = ShapeSpy()
    with ShapeFollowingBenchmark(model):
        for size in (8, 8, 12, 8):
            model(torch.zeros(1, 3, size, size))
    assert model.seen == ([True, True, False, False] if before else [False] * 4)
    assert torch.backends.cudnn.benchmark is before and not model._forward_pre_hooks
    with ShapeFollowingBenchmark(model):  # a fixed-size evaluation keeps the tuned kernels
        for _ in range(3):
            model(torch.zeros(2, 3, 8, 8))
    assert model.seen[4:] == [before] * 3


def test_validation_at_several_scales_turns_benchmark_off_and_back_on(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # what training on CUDA sets
    trainer = Trainer(tiny_cfg("trainer.max_iters=1", "eval_protocol.scales=[0.5,1.0]"), tmp_path)
    seen = []
    # what each forward ran with (a forward hook runs after the forward, so after the shape check)
    trainer.model.register_forward_hook(lambda module, args, out: seen.append(torch.backends.cudnn.benchmark))
    trainer.validate(save=False, write=False)
    assert seen[0] and not any(seen[1:]) and len(seen) > 2
    assert torch.backends.cudnn.benchmark
