"""Trainer behaviour: exact resume, atomic checkpoints, NaN handling (in-process, tiny)."""
import math

import pytest
import torch

from segbench.engine import checkpoint
from segbench.engine.checkpoint import load_checkpoint, save_checkpoint
from segbench.engine.losses import SegmentationLoss
from segbench.engine.trainer import Trainer
from segbench.errors import DivergedError
from segbench.record import RunRecord, edit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny nets: a second thread only spins under load


class Interrupted(Exception):
    pass


def test_resume_continues_exactly(tiny_cfg, tmp_path):
    common = ["trainer.max_iters=6", "trainer.val_interval=3", "trainer.seed=3", "trainer.log_interval=1"]
    straight = Trainer(tiny_cfg(*common), tmp_path / "a")
    straight.fit()

    class StopAfterFirstCheckpoint(Trainer):
        def validate(self, save=True):
            record = super().validate(save)
            raise Interrupted

    with pytest.raises(Interrupted):
        StopAfterFirstCheckpoint(tiny_cfg(*common), tmp_path / "b").fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 3
    resumed = Trainer(tiny_cfg(*common, "trainer.resume=true"), tmp_path / "b")
    assert resumed.iteration == 3
    resumed.fit()

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_a_finished_run_recorded_as_failed_is_recorded_finished(tiny_cfg, tmp_path):
    """A job that failed after its last checkpoint (a sweep reruns it) has nothing left to train:
    its record then says finished, else every rerun would list it as unfinished."""
    common = ["trainer.max_iters=2", "trainer.val_interval=2"]
    Trainer(tiny_cfg(*common), tmp_path).fit()
    with edit(tmp_path) as record:
        record.status, record.error = "failed", "RuntimeError: after the last checkpoint"
    Trainer(tiny_cfg(*common, "trainer.resume=true"), tmp_path).fit()
    record = RunRecord.load(tmp_path)
    assert (record.status, record.error, record.iteration) == ("finished", "", 2)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "iteration": 1})

    def crash_mid_write(obj, f, *a, **k):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash_mid_write)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "iteration": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["iteration"] == 1 and torch.equal(state["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temp file left behind"


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg("trainer.max_iters=4", "trainer.val_interval=2", "trainer.log_interval=1")
    Trainer(cfg, tmp_path).fit()
    before = load_checkpoint(tmp_path / "last.pt")

    monkeypatch.setattr(SegmentationLoss, "forward", lambda self, out, target: out["out"].sum() * math.nan)
    cfg = tiny_cfg("trainer.max_iters=8", "trainer.val_interval=2", "trainer.log_interval=1",
                   "trainer.resume=true")
    with pytest.raises(DivergedError, match="loss became nan at iteration 5"):
        Trainer(cfg, tmp_path).fit()
    after = load_checkpoint(tmp_path / "last.pt")
    assert after["iteration"] == before["iteration"] == 4
    for key, value in before["model"].items():
        assert torch.equal(value, after["model"][key])


def test_trainer_leaves_the_given_config_as_it_was(tiny_cfg, tmp_path):
    """The Trainer resolves what it must (the real run_dir) on its own copy."""
    from omegaconf import OmegaConf

    cfg = tiny_cfg("trainer.max_iters=1")
    before = OmegaConf.to_yaml(cfg)
    trainer = Trainer(cfg, tmp_path / "run")
    assert OmegaConf.to_yaml(cfg) == before
    assert trainer.cfg.run_dir == str(tmp_path / "run")


def test_ranks_agree_once_per_step(tiny_cfg, tmp_path, monkeypatch):
    """One agreement before each step (under DDP each is one host-side collective) and one after
    the last step (its validation's writes)."""
    checks, steps = [], []
    real_agree, real_step = Trainer.agree, Trainer.step
    monkeypatch.setattr(Trainer, "agree", lambda self: checks.append(self.iteration) or real_agree(self))
    monkeypatch.setattr(Trainer, "step", lambda self, batch: steps.append(self.iteration) or real_step(self, batch))
    Trainer(tiny_cfg("trainer.max_iters=3", "trainer.val_interval=3"), tmp_path).fit()
    assert steps == [0, 1, 2] and checks == [0, 1, 2, 3]


def test_a_checkpoint_from_before_the_named_best_resumes_with_its_value():
    """Older checkpoints hold best_mIoU: the trainer.select_by score (-1 = no validation yet)."""
    from segbench.record import Best, read_best

    assert read_best({"best_mIoU": 0.8}, "aAcc") == Best("aAcc", 0.8, None)
    assert read_best({"best_mIoU": -1.0}, "mIoU") is None
    assert read_best({"best": {"metric": "mIoU", "value": 0.5, "iteration": 4}}, "aAcc") == Best("mIoU", 0.5, 4)
