"""What makes a conversion idempotent and crash-safe: completion markers and folders built
whole (plus the progress bar every ``segbench data`` tool shows).

Every converter behind ``segbench data prepare`` (and the synthetic set's generator) writes
each output file under a temporary name and renames it into place (:mod:`segbench.io`),
builds a whole output folder beside its final name and renames it (:func:`build_dir_atomically`),
and writes a completion marker (:func:`mark_prepared`) last. No marker means "not finished":
the next ``prepare`` redoes the conversion from scratch instead of trusting what it finds.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from segbench.io import write_json

MARKER_PREFIX = ".segbench-prepared-"
STAMP = ".segbench-converted"  # inside every folder a converter built (vs. one the user unpacked)


# ---- completion markers -------------------------------------------------------------------
def marker_path(root: Path, name: str) -> Path:
    return Path(root) / f"{MARKER_PREFIX}{name}.json"


def is_prepared(root: Path, name: str) -> bool:
    return marker_path(root, name).is_file()


def mark_prepared(root: Path, name: str, **info) -> Path:
    """Written last: its presence is the only proof a conversion finished."""
    return write_json(marker_path(root, name), {"dataset": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})


def already_prepared(root: Path, name: str, force: bool) -> bool:
    """True (and says so) when ``name`` was prepared under ``root`` and ``force`` is off."""
    if is_prepared(root, name) and not force:
        print(f"{name}: already prepared ({marker_path(root, name)}); prepare.force=true redoes it")
        return True
    return False


# ---- folders ------------------------------------------------------------------------------
def build_dir_atomically(final: Path, build: Callable[[Path], None], replace: bool = True) -> None:
    """Run ``build(tmp_dir)`` in a sibling temp folder, then swap it in for ``final``.

    With ``replace``, an older ``final`` (from a run whose marker is missing, so not trusted)
    is replaced. Without it, a non-empty ``final`` is never touched: one that appeared meanwhile
    came from another process building the same seeded content (the synthetic set under DDP
    or parallel tests); the caller checks what it holds.
    A crash leaves only a ``.<name>.tmp-*`` folder, which never looks like a finished one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        if final.exists() and replace:
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, final)  # succeeds over an empty folder too
            except OSError:  # a non-empty ``final`` appeared: kept, as the docstring says
                if replace or not final.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def built_by_us(folder: Path) -> bool:
    """True for a folder a converter built (it holds :data:`STAMP`), False for the user's own."""
    return (folder / STAMP).is_file()


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no extra disk space
    except OSError:
        shutil.copyfile(src, dst)


def progress(items: Iterable, total: int | None = None, desc: str = ""):
    """A tqdm bar on stderr (none when stderr is not a terminal)."""
    return tqdm(items, total=total, desc=desc, unit="file", dynamic_ncols=True, mininterval=0.5,
                disable=None)  # None: no bar when stderr is not a terminal
