"""Does one training step fit the device? Checked before the first step, explained if not.

A recipe's per-device batch can exceed a GPU's memory (PSPNet R-101 at 713x713, global batch
16, fp32, one process: ~70-80 GB). Instead of a CUDA out-of-memory traceback after the data and
the model are built, :func:`checked_batches` runs one trial forward + backward on the first
batch (state restored: BatchNorm statistics, random streams, gradients), and
:func:`explained_out_of_memory` turns a device OOM, in the trial or in any later step, into one
message that names the ways to make it fit. The run dir then holds only the record of the
failure (run.json, status failed, with that message); checkpoints already written stay.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from segbench.errors import SegbenchError


class OutOfMemory(SegbenchError):
    """One training step does not fit the device's memory."""


def checked_batches(trainer, batches: Iterator[dict]) -> Iterator[dict]:
    """``batches`` with a trial step on the first one before it is trained on (on a GPU)."""
    first = next(batches)
    if trainer.device.type == "cuda":
        trial_step(trainer, first)
    yield first
    yield from batches


def trial_step(trainer, batch: dict) -> None:
    """Forward and backward of ``batch`` as the step runs it, then everything it touched put back
    (the trained run is the same as without the trial): buffers such as BatchNorm's running
    statistics, the random streams (dropout), and the gradients."""
    buffers = {name: b.detach().clone() for name, b in trainer.model.named_buffers()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if trainer.device.type == "cuda" else None
    try:
        trainer.step(batch, optimize=False)
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in trainer.model.named_buffers():
                b.copy_(buffers[name])
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextlib.contextmanager
def explained_out_of_memory(trainer):
    """A device OOM inside becomes :class:`OutOfMemory` with the options that make the step fit."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise OutOfMemory(message(trainer, err)) from None


def message(trainer, err: BaseException | None = None) -> str:
    settings, world = trainer.cfg.trainer, trainer.world
    per_device = int(trainer.cfg.data.batch_size) // world.size
    accumulate = settings.accumulate
    device = str(trainer.device)
    if trainer.device.type == "cuda":
        total = torch.cuda.get_device_properties(trainer.device).total_memory / 2**30
        device = f"{torch.cuda.get_device_name(trainer.device)} ({total:.0f} GiB)"
    crop = trainer.cfg.data.transforms.train.get("crop_size")
    options = [f"more GPUs (trainer.devices=N or torchrun: the global data.batch_size={trainer.cfg.data.batch_size} "
               f"is split over them, {per_device} per device now)"]
    if trainer.precision == "fp32":
        options.append("trainer.precision=bf16 (activations in half the bytes)")
    if not settings.grad_checkpoint and getattr(trainer.model, "backbone", None) is not None:
        options.append("trainer.grad_checkpoint=true (backbone activations recomputed in backward: ~0.5x peak "
                       "memory, ~1.3x step time)")
    options.append(f"trainer.accumulate=N (N smaller forward/backward passes per step, the same global batch and "
                   f"schedule; BatchNorm then normalises over {per_device}/N images; now {accumulate})")
    first = str(err).strip().splitlines()[0] if err is not None and str(err).strip() else "out of memory"
    return (f"one training step does not fit the memory of {device}: a batch of {per_device // accumulate} "
            f"images per pass, crop {list(crop) if crop is not None else '?'}, {trainer.precision} "
            f"({first}).\nTo make it fit, any of:\n" + "\n".join(f"  - {o}" for o in options))
