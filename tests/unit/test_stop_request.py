"""The signal pieces the trainer relies on under a cluster: DataLoader workers built by
segbench ignore the stop signals, and torchrun's repeat of a Ctrl-C is not a second Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from segbench.engine import build, signals
from segbench.engine.signals import STOP_SIGNALS, StopRequest


class Handlers(torch.utils.data.Dataset):
    """Each item: how the worker that loads it handles the stop signals."""

    transform = None

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"ignored": torch.tensor([signal.getsignal(s) == signal.SIG_IGN for s in STOP_SIGNALS])}


def test_segbench_loaders_start_workers_that_ignore_the_stop_signals():
    cfg = OmegaConf.create({"data": {"num_workers": 1, "val_batch_size": 2, "batch_size": 2},
                            "trainer": {"seed": 0}})
    world = type("World", (), {"size": 1, "rank": 0})()
    loaders = [build.build_eval_loader(cfg, Handlers()),
               build.build_train_loader(cfg, Handlers(), world, 0, torch.device("cpu"))]
    for loader in loaders:
        iterator = iter(loader)
        assert bool(next(iterator)["ignored"].all())
        signals.shut_down_workers(iterator)
    signals.shut_down_workers(None)  # nothing started: nothing to do


def test_torchruns_repeat_of_a_ctrl_c_is_the_same_press_a_later_one_stops_at_once(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: now[0])
    request = StopRequest()
    request._request(signal.SIGINT, None)
    now[0] += 0.2
    request._request(signal.SIGINT, None)  # torchrun passing the group's Ctrl-C on to its rank
    assert request.signum == signal.SIGINT
    now[0] += 2
    with pytest.raises(KeyboardInterrupt):
        request._request(signal.SIGINT, None)


def test_a_process_whose_loader_was_never_shut_down_still_exits():
    """Workers ignore SIGTERM; multiprocessing's exit handler ends daemonic children with it and
    then joins them. A loader never shut down (held by a global or a traceback) must not hang the
    process at exit (it did: every test run's pytest process waited there forever)."""
    code = ("from torch.utils.data import DataLoader\n"
            "from segbench.engine.signals import ignore_stop_signals\n"
            "loader = DataLoader(list(range(100)), batch_size=1, num_workers=2, persistent_workers=True,\n"
            "                    worker_init_fn=ignore_stop_signals)\n"
            "KEPT = iter(loader)\n"
            "next(KEPT)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
