"""Checkpoints that are never half-written, loading that says what is wrong, and what a resume
from one may change (:func:`resume_changes`)."""
from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segbench.errors import CheckpointError, SegbenchError
from segbench.io import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point weight and buffer of ``model`` is finite (before a checkpoint
    keeps it: a NaN on another rank reaches these weights through the gradient all-reduce)."""
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return not checks or bool(torch.stack(checks).all())


class UntrustedCheckpointError(CheckpointError):
    """The checkpoint is a pickle that needs code (a global) to load: refused unless trusted."""


def _reason(err: Exception) -> str:
    """One short line out of what ``torch.load`` raised (its messages run to 15 lines)."""
    text = str(err)
    for marker in ("Unsupported operand", "failed finding central directory", "invalid load key"):
        if marker in text:
            return text[text.index(marker):].splitlines()[0].split(". ")[0].rstrip(". ")
    if isinstance(err, EOFError) or not text.strip():
        return "empty or truncated file"
    return f"{type(err).__name__}: {text.strip().splitlines()[0][:160]}"


def load_checkpoint(path: Path, trust: bool = False, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's content, read as data only (``torch.load(weights_only=True)``).

    A checkpoint is tensors, dicts, lists, numbers and strings (what :class:`Trainer.save
    <segbench.engine.trainer.Trainer>` writes); a pickle that needs any other global would run
    code from the file while loading, so it is refused (:class:`UntrustedCheckpointError`)
    unless ``trust`` (``trust_checkpoint=true``: this runs code from the file). Anything
    unreadable (empty, truncated, random bytes, no ``model`` entry) is a :class:`CheckpointError`
    "not a segbench checkpoint: <path> (<reason>)". ``mmap`` maps the tensors instead of reading
    them (to look at the config of a large file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except pickle.UnpicklingError as err:
        needs = re.search(r"GLOBAL ([\w.]+)", str(err))
        if needs and not trust:
            raise UntrustedCheckpointError(
                f"not a segbench checkpoint: {path} (it needs code to load: {needs.group(1)}). Open it "
                f"only if you trust its author, with trust_checkpoint=true: this runs code from the file"
            ) from None
        raise CheckpointError(f"not a segbench checkpoint: {path} ({_reason(err)})") from None
    except Exception as err:  # noqa: BLE001 -- torch raises many types for a truncated/foreign file
        raise CheckpointError(f"not a segbench checkpoint: {path} ({_reason(err)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"not a segbench checkpoint: {path} (no 'model' entry)")
    return state


def resume_path(value, run_dir: Path) -> Path:
    """The checkpoint ``trainer.resume`` names: ``true``/``auto`` = ``<run_dir>/last.pt``, a run
    directory = its ``last.pt``, else the file itself."""
    path = Path(run_dir) / "last.pt" if value is True or value == "auto" else Path(str(value))
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"trainer.resume: no checkpoint at {path}")
    return path


def restore_training(state: dict[str, Any], path: Path, model, optimizer, scheduler, scaler) -> None:
    """Put the weights, optimiser, LR schedule and loss scaler back as ``state`` saved them (the
    random generators: :func:`restore_rng`, once the data loader has drawn its seed)."""
    load_model_weights(model, state, path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a training step draws from: torch's CPU generator, the CUDA
    generator of the GPU this process trains on (dropout on the GPU), Python's and NumPy's.

    The data order needs none: each iteration's images and augmentations are a function of the
    seed and the iteration (:class:`~segbench.engine.sampler.ResumableSampler`), both in the
    checkpoint. Plain tensors, tuples and ints only: a checkpoint loads as data (``weights_only``).
    """
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                           "pos": int(numpy_state["state"]["pos"])}},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Set the generators :func:`rng_state` saved (older checkpoints hold the CPU one only; a
    checkpoint from a GPU resumed on the CPU has no CUDA generator to set)."""
    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        saved = state["numpy"]
        key = saved["state"]["key"].numpy().astype(np.uint32)
        np.random.set_state({**saved, "state": {"key": key, "pos": saved["state"]["pos"]}})
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load strictly; on mismatch name the model the checkpoint came from and the first keys."""
    weights = state["model"]
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shape_errors = [k for k, v in own.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shape_errors:
        saved = state.get("config", {}).get("model", {}).get("_target_", "unknown model")
        raise CheckpointError(
            f"checkpoint {path} does not fit this model (it was trained with {saved}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, shape mismatches {shape_errors[:3]}"
        )
    model.load_state_dict(weights)


# ---- what a resume may change -------------------------------------------------------------------
# Keys whose change on resume would alter the optimisation; only trainer.max_iters may change
# (the schedule is re-planned and the change recorded), the rest is refused. A resume compares only
# the keys the user typed (segbench.app.saved.for_resume); data that moved (data.root and its
# resolved copy data.dataset.root) changes nothing the run learns.
RESUME_KEYS = ("optim", "schedule", "model", "data", "loss", "trainer.max_iters", "trainer.seed",
               "trainer.precision", "trainer.grad_clip")
RESUME_FREE = ("data.root", "data.dataset.root", "data.num_workers", "data.val_batch_size", "data.val_split")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def resume_changes(saved: dict, now: dict) -> dict:
    """``{key: (checkpoint's, now)}`` for the optimisation keys a resume changes: only
    ``trainer.max_iters`` is accepted; any other change is refused, never recorded-but-ignored."""
    old, new = _flatten(saved), _flatten(now)

    def watched(key: str) -> bool:
        return (any(key == k or key.startswith(k + ".") for k in RESUME_KEYS)
                and not any(key == k or key.startswith(k + ".") for k in RESUME_FREE))

    changed = {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if watched(k) and old[k] != new[k]}
    refused = {k: v for k, v in changed.items() if k != "trainer.max_iters"}
    if refused:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:6])
        more = f" (+{len(refused) - 6} more)" if len(refused) > 6 else ""
        raise SegbenchError(
            f"a resume continues the run as it was planned; these overrides would change it: {listed}{more}. "
            f"Only trainer.max_iters may change on resume (the LR schedule is re-planned and the change recorded "
            f"in run.json); train a new run (another run_dir=) for the rest, or warm-start one from this run's "
            f"weights with trainer.resume=<the run>/last.pt and the new settings")
    return changed
