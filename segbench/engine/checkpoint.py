"""Checkpoints that are never half-written, and loading that says what is wrong."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from segbench.errors import CheckpointError


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result over ``path``: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def write_json(path: Path, data: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, allow_nan=True)
            f.write("\n")

    atomic_write(path, write)


def read_json(path: Path) -> dict:
    """A JSON file's content, or {} when it is missing or unreadable (e.g. half-written by a crash)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a truncated/foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a segbench checkpoint (no 'model' entry)")
    return state


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
