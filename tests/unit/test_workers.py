"""``data.num_workers: auto``: the cores this process may run on, shared by the local ranks,
one kept for the process itself, never more workers than items; a count is taken as given."""
import pytest
import torch

from segbench.data import workers
from segbench.data.workers import num_workers
from segbench.engine import build
from segbench.engine.distributed import World
from segbench.errors import SegbenchError


@pytest.mark.parametrize("cores, processes, items, expected", [
    (16, 1, 10_000, 15),  # a 16-core GPU host, one GPU
    (16, 8, 10_000, 1),   # 8 GPUs share it
    (64, 8, 10_000, 7),
    (2, 1, 10_000, 1),    # this CPU machine
    (1, 1, 10_000, 1),
    (16, 1, 3, 3),        # a 3-image split (or 3 eval batches): no idle workers
])
def test_auto_shares_the_cores_among_local_processes(cores, processes, items, expected):
    assert num_workers("auto", items, cores=cores, processes=processes) == expected


def test_auto_reads_the_affinity_mask_and_torchrun(monkeypatch):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert num_workers("auto", 100) == 3


@pytest.mark.parametrize("given", [0, 3, "5"])
def test_a_count_is_honoured(given):
    assert num_workers(given, 1) == int(given)


@pytest.mark.parametrize("bad", [-1, "many", True, 1.5])
def test_anything_else_is_refused(bad):
    with pytest.raises(SegbenchError, match="auto or an integer >= 0"):
        num_workers(bad, 10)


def test_loaders_resolve_auto_and_keep_workers(tiny_cfg, monkeypatch):
    monkeypatch.setattr(workers, "available_cores", lambda: 3)
    cfg = tiny_cfg("data.num_workers=auto")
    dataset = build.build_dataset(cfg, "train", train=True)
    train = build.build_train_loader(cfg, dataset, World(), 0, torch.device("cpu"))
    assert train.num_workers == 2 and train.persistent_workers and not train.pin_memory
    val = build.build_eval_loader(cfg, build.build_dataset(cfg, "val", train=False))
    assert val.num_workers == 2  # 8 images in batches of 4


def test_a_gpu_loader_pins_memory_and_prefetches_more():
    options = build.loader_options(4, torch.device("cuda"))
    assert options == {"pin_memory": True, "prefetch_factor": 4}
    assert build.loader_options(0, torch.device("cuda")) == {"pin_memory": True}
    assert build.loader_options(2, torch.device("cpu")) == {"pin_memory": False}


def test_validation_accepts_auto_and_counts(tiny_cfg, tmp_path):
    from segbench.app.validate import check_train

    for setting in ("auto", "0", "3"):
        check_train(tiny_cfg(f"data.num_workers={setting}", f"run_dir={tmp_path}"))
    with pytest.raises(SegbenchError, match="data.num_workers"):
        check_train(tiny_cfg("data.num_workers=-1", f"run_dir={tmp_path}"))
