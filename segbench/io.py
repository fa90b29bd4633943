"""Atomic file writes and JSON: the one home of these helpers for the whole package.

Every file segbench writes (checkpoints, records, prepared labels, predictions) goes through
:func:`atomic_write`: the content is written to a temporary file in the same folder and
renamed over the target, so a crash, a kill or a full disk leaves the old file (or none),
never a half-written one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
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
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    """Indented JSON (NaN allowed: absent classes have NaN IoU), written atomically."""
    return write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def read_json(path: str | Path) -> dict:
    """A JSON file's content, or {} when it is missing or unreadable (e.g. half-written by a crash)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_png(array: np.ndarray, path: str | Path, palette: np.ndarray | None = None) -> Path:
    """Write an HxW uint8 array as a grey (or palette, if given) PNG, or an HxWx3 one as RGB."""
    from PIL import Image  # deferred: segbench.parts uses this module on a machine before its packages are installed

    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))  # mode "L" (or "RGB")
    if palette is not None:  # on an "L" image this relabels the mode to "P", indices untouched
        img.putpalette(np.asarray(palette, dtype=np.uint8).flatten().tolist())
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
