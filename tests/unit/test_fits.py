"""A step too large for the device ends with one message naming the options (more GPUs, bf16,
gradient checkpointing, trainer.accumulate), not a CUDA OOM traceback; nothing is lost. And
trainer.accumulate=N: N forward/backward passes per optimiser step, the same update."""
import json

import pytest
import torch

from segbench.engine import fits, step
from segbench.engine.checkpoint import load_checkpoint
from segbench.engine.trainer import Trainer
from segbench.errors import SegbenchError

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"


def raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError(OOM)


def test_out_of_memory_in_a_step_gives_the_options_and_loses_nothing(tiny_cfg, tmp_path, monkeypatch):
    from segbench.cli import user_error

    common = ["trainer.val_interval=1", "trainer.log_interval=1"]
    Trainer(tiny_cfg("trainer.max_iters=1", *common), tmp_path).fit()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "run.json"}

    monkeypatch.setattr(step, "forward_backward", raise_oom)
    with pytest.raises(fits.OutOfMemory) as caught:
        Trainer(tiny_cfg("trainer.max_iters=2", "trainer.resume=true", *common), tmp_path).fit()
    text = str(caught.value)
    assert "does not fit the memory of cpu" in text and "a batch of 4 images per pass" in text
    for option in ("more GPUs", "trainer.precision=bf16", "trainer.accumulate=N"):
        assert option in text
    assert "Traceback" not in text and OOM in text
    assert isinstance(caught.value, SegbenchError) and user_error(caught.value) == text  # CLI: this, exit 2
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "run.json"}
    assert after == before  # checkpoints untouched, nothing new
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and "trainer.accumulate=N" in record["error"]
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1


def test_options_already_in_effect_or_impossible_are_not_offered(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg("trainer.precision=bf16"), tmp_path)  # a U-Net: no backbone to checkpoint
    text = fits.message(trainer)
    assert "grad_checkpoint=true" not in text and "precision=bf16" not in text and "trainer.accumulate=N" in text


def test_trial_step_leaves_the_run_as_it_was(tiny_cfg, tmp_path):
    """The trial's forward/backward touches BatchNorm statistics, the RNG and the gradients:
    all put back, so a run with the trial trains exactly as one without."""
    trainer = Trainer(tiny_cfg("trainer.max_iters=2"), tmp_path)
    batch = {"image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
             "label": torch.randint(0, 6, (4, 32, 32), dtype=torch.uint8)}
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    fits.trial_step(trainer, batch)
    assert all(torch.equal(v, state[k]) for k, v in trainer.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert trainer.scheduler.last_epoch == 0 and not trainer.optimizer.state


def test_the_trial_runs_on_gpus_only_and_passes_every_batch_on(tiny_cfg, tmp_path, monkeypatch):
    trainer = Trainer(tiny_cfg(), tmp_path)
    trials = []
    monkeypatch.setattr(fits, "trial_step", lambda trainer, batch: trials.append(batch))
    assert list(fits.checked_batches(trainer, iter([1, 2, 3]))) == [1, 2, 3] and trials == []
    trainer.device = torch.device("cuda")
    assert list(fits.checked_batches(trainer, iter([1, 2, 3]))) == [1, 2, 3] and trials == [1]


def test_accumulation_makes_the_same_update_from_parts():
    """N parts of B/N images (equal labelled pixels each) give the one-pass gradient, so SGD makes
    the same update, up to float summation order. BatchNorm in eval mode here: in training it
    normalises over B/N images, the one thing accumulation changes."""
    import copy

    import segbench
    from segbench.data.normalization import Normalization
    from segbench.engine.losses import SegmentationLoss

    torch.manual_seed(0)
    base = segbench.build_model("unet_small", 6, base_channels=4).train()
    for m in base.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 6, (4, 16, 16), dtype=torch.uint8)
    results = []
    for n in (1, 4):
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        loss = step.train_step(model, SegmentationLoss(), optimizer, torch.amp.GradScaler(enabled=False), images, labels,
                               normalization=Normalization(), accumulate=n)
        results.append((loss, model.state_dict()))
    for loss, weights in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-5, atol=1e-6)
        for key, value in results[0][1].items():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad, match", [("3", "must divide the 4 images"), ("0", "positive integer")])
def test_accumulate_must_split_the_batch(tiny_cfg, tmp_path, bad, match):
    with pytest.raises(SegbenchError, match=match):
        Trainer(tiny_cfg(f"trainer.accumulate={bad}"), tmp_path)
