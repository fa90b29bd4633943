"""Which GPU a process trains on, and that it is bound before the process group and any collective.

No GPU needed: the launcher's environment variables are faked, and ``torch.cuda`` /
``torch.distributed`` are replaced by recorders, so the test sees the order of the calls the
trainer's setup makes (``set_device`` -> ``init_process_group(device_id=...)`` -> collectives).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from segbench.engine import device as device_module
from segbench.engine.trainer import Trainer
from segbench.errors import SegbenchError

LAUNCH_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SUBMITIT_EXECUTOR", "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def machine(monkeypatch):
    """A machine with ``gpus`` GPUs and a launcher's environment; returns the recorded calls."""
    calls = []

    def make(gpus: int, **env):
        for key in LAUNCH_KEYS:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        monkeypatch.setattr(dist, "init_process_group", lambda backend=None, **kw: calls.append(
            ("init_process_group", backend, str(kw.get("device_id")))))
        monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
        monkeypatch.setattr(dist, "get_rank", lambda *a: int(env.get("RANK", 0)))
        monkeypatch.setattr(dist, "new_group", lambda **kw: calls.append(("new_group", kw.get("backend"))) or "gloo-group")

        def broadcast_object_list(holder, src=0, group=None):
            calls.append(("broadcast_object_list", group))

        monkeypatch.setattr(dist, "broadcast_object_list", broadcast_object_list)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        return calls

    return make


def set_up(tmp_path, device: str = "auto") -> Trainer:
    """The trainer's machine set-up alone (what runs before the model and data are built)."""
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = OmegaConf.create({"trainer": {"device": device, "precision": "auto", "channels_last": "auto",
                                                "cudnn_benchmark": True, "seed": 0, "deterministic": False,
                                                "resume": False, "devices": 1}})
    trainer._set_up_machine(tmp_path)
    return trainer


def test_torchrun_rank_binds_its_gpu_before_the_process_group_and_any_collective(machine, tmp_path):
    calls = machine(4, RANK=2, LOCAL_RANK=2, WORLD_SIZE=4, LOCAL_WORLD_SIZE=4)
    trainer = set_up(tmp_path)
    assert trainer.device == torch.device("cuda", 2) and trainer.world.size == 4
    assert calls[0] == ("set_device", "cuda:2"), calls  # before anything else touches a GPU
    assert calls[1] == ("init_process_group", "nccl", "cuda:2"), calls
    assert ("broadcast_object_list", "gloo-group") in calls[2:], calls  # host objects: the gloo group
    assert [c[0] for c in calls].count("set_device") == 1
    assert torch.backends.cudnn.benchmark  # training crops have one shape


@pytest.mark.parametrize("gpus,env,asked,expected", [
    (2, {}, "cuda:1", "cuda:1"),  # explicit, single process: that GPU, not GPU 0
    (2, {}, "auto", "cuda:0"),
    (4, {"RANK": 3, "LOCAL_RANK": 3, "WORLD_SIZE": 4}, "cuda", "cuda:3"),  # torchrun
    (1, {"RANK": 5, "LOCAL_RANK": 1, "WORLD_SIZE": 8}, "auto", "cuda:0"),  # SLURM: one GPU bound per task
    (1, {"RANK": 1, "LOCAL_RANK": 1, "WORLD_SIZE": 2}, "cuda:0", "cuda:0"),  # ... named explicitly
])
def test_the_device_each_launch_gets(machine, tmp_path, gpus, env, asked, expected):
    calls = machine(gpus, **env)
    trainer = set_up(tmp_path, asked)
    assert str(trainer.device) == expected
    assert calls[0] == ("set_device", expected)
    if "WORLD_SIZE" in env:
        assert calls[1] == ("init_process_group", "nccl", expected)


@pytest.mark.parametrize("gpus,env,asked,message", [
    (2, {"RANK": 1, "LOCAL_RANK": 1, "WORLD_SIZE": 2}, "cuda:1", "names one GPU for 2 processes"),
    (2, {}, "cuda:2", "sees 2 GPU"),
    (2, {"RANK": 3, "LOCAL_RANK": 3, "WORLD_SIZE": 4}, "auto", "LOCAL_RANK=3 but this process sees 2 GPUs"),
])
def test_impossible_devices_are_refused_before_touching_a_gpu(machine, gpus, env, asked, message):
    calls = machine(gpus, **env)
    with pytest.raises(SegbenchError, match=message):
        device_module.bind_device(asked)
    assert calls == []


def test_cpu_binds_nothing(machine):
    calls = machine(0)
    assert device_module.bind_device("cpu") == torch.device("cpu") and calls == []
